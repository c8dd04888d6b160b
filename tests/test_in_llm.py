"""Pruning inside the LLM: per-layer cache lengths, frozen layers that really skip visual rows, refusals."""

import pytest
import torch

from backends import media, runner
from backends.runner import build_sequence
from backends.settings import Settings
from backends.state import RunState
from backends.types import GenerationSettings, MethodSpec, RunRequest
from methods.shortv import frozen_forward

S = Settings()


def run(lm, path, name, params=None, tokens=6):
    req = RunRequest(media.image_media(path, S), "is there a red circle?", MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0))
    return runner.run(req, lm, S)


def test_fastv_cache_is_shorter_from_layer_k(random_model, scene_png):
    res = run(random_model, scene_png, "fastv", {"keep": 0.25, "layer": 3})
    tc = random_model.adapter.text_config
    per_token_layer = 2 * tc.num_key_value_heads * (tc.hidden_size // tc.num_attention_heads) * 4
    full, short = res.info["seq_len"], res.info["seq_len"] - (64 - 16)
    assert res.memory.kv_cache_bytes_prefill == per_token_layer * (3 * full + 5 * short)
    assert res.memory.kv_cache_bytes == res.memory.kv_cache_bytes_prefill + per_token_layer * 8 * (
        res.output_tokens - 1)
    assert res.visual_tokens.per_layer == [64, 64, 64, 16, 16, 16, 16, 16]
    assert len(res.stage_maps) == 1 and sum(map(sum, res.kept_map[0])) == 16


def llm_input(lm, path, question="how many shapes are there?"):
    """The LLM's prompt input for one image: run state, embeddings [1, L, D], position ids, (cos, sin)."""
    ad = lm.adapter
    inputs = ad.preprocess(media.frames_of(media.image_media(path, S), S), question)
    state = RunState(ad, inputs["input_ids"], inputs["pixel_values"], question)
    with torch.inference_mode():
        state.encode_vision()
        embeds, pos = build_sequence(state)
        return state, embeds, pos, ad.rotary_emb(embeds, position_ids=pos)


def test_shortv_frozen_layer_skips_visual_rows_exactly(random_model, scene_png):
    """A frozen layer's text rows equal the normal layer's; its visual rows are its input, untouched."""
    ad = random_model.adapter
    state, embeds, pos, cos_sin = llm_input(random_model, scene_png)
    with torch.inference_mode():
        layer = ad.layers[3]
        ref = layer(embeds, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
        vis = torch.zeros(embeds.shape[1], dtype=torch.bool)
        vis[state.visual_slots] = True
        out = frozen_forward(layer, vis)(layer, embeds, position_ids=pos, position_embeddings=cos_sin)
    assert torch.equal(out[:, vis], embeds[:, vis])
    assert torch.allclose(out[:, ~vis], ref[:, ~vis], atol=1e-5)


def test_shortv_cuts_prefill_work_and_reports_frozen_layers(random_model, scene_png):
    res = run(random_model, scene_png, "shortv", {"n_frozen": 3})
    assert len(res.info["frozen_layers"]) == 3 and res.visual_tokens.per_layer.count(0) == 3
    assert res.visual_tokens.kept == 64 and res.kept_map == [[[1.0] * 8] * 8]


def test_meteor_refuses_multi_encoder_stages(random_model, scene_png):
    from backends.types import RequestError

    with pytest.raises(RequestError, match="this model has one vision encoder"):
        run(random_model, scene_png, "meteor", {"stages": "1-3"})


def test_feather_scores_without_rope(random_model, scene_png):
    """FEATHER's score is RoPE-free: it equals q.k of the normed input with no rotary applied."""
    ad = random_model.adapter
    state, h, pos, cs = llm_input(random_model, scene_png, "q")
    with torch.inference_mode():
        last, vis = torch.tensor([h.shape[1] - 1]), state.visual_slots
        no_rope = ad.llm_attention(1, h, cs, last, vis, rope=False)
        with_rope = ad.llm_attention(1, h, cs, last, vis, rope=True)
        layer, d = ad.layers[1], ad.head_dim
        x = layer.input_layernorm(h)[0]
        q = layer.self_attn.q_proj(x[last]).view(-1, d)  # [H, d]
        k = layer.self_attn.k_proj(x[vis]).view(len(vis), -1, d).transpose(0, 1)  # [H, V, d]
        manual = torch.softmax((q[:, None, :] * k).sum(-1) * d**-0.5, -1)
    assert torch.allclose(no_rope[:, 0], manual, atol=1e-6)
    assert not torch.allclose(no_rope, with_rope, atol=1e-4)
