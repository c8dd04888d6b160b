"""Each method computes what its official code (or paper) computes: FastV's score against the model's own eager
attention, original positions after in-LLM pruning, PruMerge+'s extras, FOLDER's fold, METEOR's adaptive K,
ShortV's KL direction, SparseVILA without CLS, and the fidelity Dynamic-VLM reports per model."""

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest
from methods._util import budget
from methods.folder import bipartite_merge, fold
from methods.meteor import adaptive_keep
from methods.prumerge import farthest_points, plus_extras, uniform_extras
from tests.test_in_llm import llm_input

S = Settings()
PROMPT = "how many shapes are there?"


def run(lm, path, name, params=None, tokens=3):
    req = RunRequest(media.image_media(path, S), PROMPT, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0))
    res = runner.run(req, lm, S)
    assert res.ok, res.error
    return res


def kept_patches(res) -> set[int]:
    """Raster indices of the patches that reach the LLM's last layer (no pre-LLM reduction: 0/1 map)."""
    return {i for i, v in enumerate(v for row in res.kept_map[0] for v in row) if v > 0}


def eager(model_dir: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, attn_implementation="eager").eval()


# ---- FastV --------------------------------------------------------------------------------------------------
def test_fastv_keeps_the_top_k_of_the_models_own_eager_attention(random_model, random_model_dir, scene_png):
    """Official FastV: layer K-1's attention as the model computes it (eager, output_attentions), head mean, last
    prompt row, image columns. FEATHER's baseline renormalises each head over the image columns first."""
    k_layer, keep = 3, 0.25
    state, embeds, pos, _ = llm_input(random_model, scene_png, PROMPT)
    with torch.inference_mode():
        out = eager(random_model_dir).model.language_model(inputs_embeds=embeds, position_ids=pos,
                                                           output_attentions=True)
    rows = out.attentions[k_layer - 1][0, :, -1, state.visual_slots]  # [H, 64]: last row, image columns
    top = int(keep * 64)
    official = set(rows.mean(0).topk(top).indices.tolist())
    feather = set((rows / rows.sum(-1, keepdim=True)).mean(0).topk(top).indices.tolist())
    res = run(random_model, scene_png, "fastv", {"keep": keep, "layer": k_layer})
    assert res.info["score"] == "fastv" and kept_patches(res) == official
    res = run(random_model, scene_png, "fastv", {"keep": keep, "layer": k_layer, "score": "feather_baseline"})
    assert kept_patches(res) == feather


@pytest.mark.parametrize("name, params", [("fastv", {"keep": 0.25, "layer": 3}), ("feather", {"keep": 0.5}),
                                          ("meteor", {})])
def test_in_llm_survivors_keep_their_original_positions(random_model, scene_png, name, params):
    """At the last decoder layer the rotary (cos, sin) and position ids are those of the surviving tokens'
    original slots: text and kept image tokens at the positions they had before anything was dropped."""
    ad = random_model.adapter
    seen = {}

    def capture(module, args, kwargs):
        if kwargs["hidden_states"].shape[1] > 1 and "cos" not in seen:  # the prefill call, not decode steps
            seen["cos"], seen["ids"] = kwargs["position_embeddings"][0], kwargs.get("position_ids")

    handle = ad.layers[-1].self_attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        res = run(random_model, scene_png, name, params)
    finally:
        handle.remove()
    ids = ad.preprocess(media.frames_of(media.image_media(scene_png, S), S), PROMPT)["input_ids"]
    first = int(ad.image_positions(ids)[0])
    kept = sorted(kept_patches(res))
    assert len(kept) == res.visual_tokens.per_layer[-1] < 64
    alive = list(range(first)) + [first + k for k in kept] + list(range(first + 64, ids.shape[1]))
    expect = torch.tensor(alive)[None]
    cos, _ = ad.rotary_emb(torch.zeros(1, 1, ad.head_dim), position_ids=expect)
    assert seen["cos"].shape == cos.shape and torch.equal(seen["cos"], cos)
    if seen["ids"] is not None:
        assert seen["ids"].tolist() == expect.tolist()


# ---- PruMerge+ ----------------------------------------------------------------------------------------------
def test_prumerge_plus_gives_the_official_count_on_576_patches():
    """32 outliers of 576 (PruMerge's 5.5%): ratio 1/18, the code's stride int(18 / 3) = 6 over arange(0, 575)."""
    kept = torch.cat([torch.arange(0, 576, 36), torch.arange(9, 576, 36)])  # 32 outliers, 16 on the sequence
    extras, rule = plus_extras(kept, 24, 24)
    official = [i for i in range(0, 575, 6) if i not in set(kept.tolist())]
    assert extras.tolist() == official and len(official) == 96 - 16 and rule.startswith("official")
    assert torch.equal(uniform_extras(kept, 576), extras)


@pytest.mark.parametrize("n", range(9, 17))
def test_prumerge_plus_keeps_a_quarter_of_64_patches(n):
    """9-16 outliers of 64: the code's stride collapses (int(int(64/n)/3) <= 2), which would keep 35-64 patches;
    the capped rule keeps round(64/4) = 16, 25%, with extras spread away from the outliers."""
    kept = torch.randperm(64, generator=torch.Generator().manual_seed(n))[:n]
    assert len(uniform_extras(kept, 64)) + n >= 35
    extras, rule = plus_extras(kept, 8, 8)
    assert n + len(extras) == 16 and rule.startswith("capped")
    assert not set(extras.tolist()) & set(kept.tolist()) and extras.tolist() == sorted(extras.tolist())


def test_prumerge_plus_extras_fill_the_farthest_gaps():
    block = torch.tensor([r * 8 + c for r in range(4) for c in range(3)])  # outliers fill the top-left 4x3
    # farthest from the block: bottom right (63); then top right (7, first of the ties); then bottom left (56)
    assert farthest_points(block, 3, 8, 8).tolist() == [7, 56, 63]


def test_prumerge_scales_its_neighbours_and_reports_the_rule(random_model, scene_png):
    res = run(random_model, scene_png, "prumerge_plus")
    n = res.info["outliers"][0]
    assert res.info["neighbors"] == round(32 * 64 / 576) == 4
    assert res.visual_tokens.kept == res.info["selected"][0] + 1
    if res.info["extras_rule"][0].startswith("capped"):  # the code's stride would pass 25%: filled to 16
        assert res.info["selected"][0] == max(n, 16)
    else:
        assert res.info["extras_rule"][0].startswith("official") and n < res.info["selected"][0] <= 16
    assert res.info["score_note"].startswith("q/k of layer 3 from its input")  # the built-in shape: features = last


# ---- FOLDER -------------------------------------------------------------------------------------------------
def test_folder_folds_577_tokens_twice_to_193():
    torch.manual_seed(0)
    t = 577
    x, metric, cls = torch.randn(t, 16), torch.randn(t, 8), torch.softmax(torch.randn(t), 0)
    out, members, lengths = fold(x, metric, cls, 576 - budget(1 / 3, 576), 5.0, 100.0, 40)
    assert budget(1 / 3, 576) == 192 and lengths == [289, 193] and out.shape == (193, 16)
    assert torch.equal(members.sum(0), torch.ones(t)) and members[0].nonzero().flatten().tolist() == [0]
    # a merged token is the mean of the originals it holds (size-weighted means compose exactly)
    assert torch.allclose(out, (members / members.sum(1, keepdim=True)) @ x, atol=1e-5)


def test_folder_merges_cls_attention_by_mean():
    """scatter_reduce(mode="mean") with the b itself included: (cls_b + sum of merged a's) / (1 + count)."""
    t = 7  # A = rows 0, 2, 4, 6; B = rows 1, 3, 5
    metric = torch.eye(t)
    metric[2], metric[6] = metric[3], metric[3]  # tokens 2 and 6 (in A) both match token 3 (in B)
    cls = torch.tensor([0.5, 0.1, 0.01, 0.04, 0.0, 0.2, 0.01])
    _, size, members, _, cls2 = bipartite_merge(torch.zeros(t, 1), torch.ones(t), torch.eye(t), metric, cls, 2, 0.0)
    merged = [i for i, s in enumerate(size) if s == 3]
    assert len(merged) == 1 and members[merged[0]].nonzero().flatten().tolist() == [2, 3, 6]
    assert cls2[merged[0]].item() == pytest.approx((0.04 + 0.01 + 0.01) / 3)  # a sum would give 0.06


def test_folder_protection_term_scaled_to_the_token_count():
    """On 65 tokens the code's weight 100 makes the term (mean ~7.7) decide every match; scaled by 65/577 it is
    ~0.9 again, so an identical pair merges despite slightly above-average CLS attention."""
    t = 65
    metric = torch.eye(t)
    metric[4] = metric[3]  # 4 (A) and 3 (B) are identical
    cls = torch.full((t,), 1 / t)
    cls[4] = 1.3 / t
    args = (torch.zeros(t, 1), torch.ones(t), torch.eye(t), metric, cls, 1, 5.0)
    pair = lambda out: [m.nonzero().flatten().tolist() for m, s in zip(out[2], out[1]) if s == 2][0]  # noqa: E731
    assert pair(bipartite_merge(*args, weight=100.0)) != [3, 4]
    assert pair(bipartite_merge(*args, weight=100.0 * t / 577)) == [3, 4]


def test_folder_default_keeps_a_third(random_model, scene_png):
    res = run(random_model, scene_png, "folder")
    assert res.visual_tokens.kept == budget(1 / 3, 64) == 21
    assert res.info["passes"] == [2] and res.info["protect_weight"] == round(100 * 65 / 577, 3)


# ---- METEOR -------------------------------------------------------------------------------------------------
def meteor_attention(mass: list[float], v: int = 5) -> torch.Tensor:
    """[H, 2, v]: head h pays share mass[h] of every text row to the visual tokens, most to token h % v."""
    att = torch.zeros(len(mass), 2, v)
    for h, m in enumerate(mass):
        att[h, :, :] = m * 0.1 / (v - 1)
        att[h, :, h % v] = m * 0.9
    return att


def test_meteor_adaptive_k_grows_with_the_top_heads_mass():
    scores, k, heads = adaptive_keep(meteor_attention([0.8, 0.2, 0.4, 0.1]), 0.5, 1.0)
    assert heads == [0, 2] and k == round(5 * (0.8 + 0.4) / 2) == 3
    assert scores.argmax().item() == 0 and scores[1] == scores[3]  # heads 1 and 3 are not counted
    _, k2, _ = adaptive_keep(meteor_attention([0.9, 0.2, 0.7, 0.1]), 0.5, 1.0)
    _, k3, _ = adaptive_keep(meteor_attention([0.9, 0.2, 0.7, 0.1]), 0.5, 0.5)
    assert (k2, k3) == (4, 2)  # more mass, more tokens; lambda scales K
    _, _, heads = adaptive_keep(meteor_attention([0.1, 0.9, 0.2, 0.3]), 0.25, 1.0)
    assert heads == [1]


# ---- ShortV -------------------------------------------------------------------------------------------------
def test_shortv_calibration_ranks_by_kl_mod_to_orig_ascending(monkeypatch, tmp_path):
    """LC_i = KL(p_mod || p_orig). On this case the reverse direction would order layers 0 and 1 the other way."""
    from backends import calibrate

    orig = [0.6, 0.3, 0.1]
    mods = {0: [0.3, 0.2, 0.5], 1: [0.9, 0.095, 0.005], 2: orig}  # KL(m||o) = .516, .241, 0; KL(o||m) = .377, .402
    monkeypatch.setattr(calibrate, "prompt_input", lambda lm, image, q: (None, None, None))
    monkeypatch.setattr(calibrate, "last_token_logprobs",
                        lambda lm, st, e, p, frozen: torch.tensor(mods[frozen[0]] if frozen else orig).log())
    lm = SimpleNamespace(adapter=SimpleNamespace(layers=[0, 1, 2]), model=SimpleNamespace(name_or_path=str(tmp_path)))
    path, order = calibrate.write_calibration(lm, [(None, "q")], "fake", "hand-made")
    kl = [sum(m * math.log(m / o) for m, o in zip(mods[i], orig)) for i in range(3)]
    assert order == [2, 1, 0]
    assert json.loads(path.read_text())["lc"] == pytest.approx(kl, abs=1e-5)


# ---- SparseVILA ---------------------------------------------------------------------------------------------
def test_sparsevila_ranks_by_received_attention_without_cls(tmp_path):
    """On a SigLIP tower (no CLS) the salience is the mean attention each token receives in the feature layer:
    checked against the tower's own eager attention (output_attentions)."""
    from backends import shapes
    from backends.models import load_model
    from tests.conftest import scene

    model_dir = str(shapes.build("onevision-tiny", tmp_path / "ov", text_scale=8))
    lm = load_model(model_dir, S)
    assert lm.adapter.num_prefix_tokens == 0
    img = str(scene(tmp_path / "s.png"))
    res = run(lm, img, "sparsevila", {"keep": 0.25})
    pixels = lm.adapter.preprocess(media.frames_of(media.image_media(img, S), S), PROMPT)["pixel_values"]
    with torch.inference_mode():
        att = eager(model_dir).model.vision_tower(pixels, output_attentions=True).attentions
    received = att[lm.adapter.feature_depth - 1][0].mean(0).mean(0)  # [36]: mean over heads, then queries
    assert kept_patches(res) == set(received.topk(budget(0.25, 36)).indices.tolist())


# ---- Dynamic-VLM --------------------------------------------------------------------------------------------
def test_dynamic_vlm_reports_its_fidelity_per_model(random_model, random_model_dir, scene_png, tmp_path):
    from backends.models import load_model

    res = run(random_model, scene_png, "dynamic_vlm")
    assert res.info["fidelity"].startswith("a training-free approximation")
    assert res.info["budget_rule"].startswith("ours: keep x all tokens")
    trained = tmp_path / "trained"
    shutil.copytree(random_model_dir, trained)
    cfg = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**cfg, "dynamic_vlm_trained": True}))
    res = run(load_model(str(trained), S), scene_png, "dynamic_vlm", {"max_tokens": 16})
    assert res.info["fidelity"].startswith("the paper's recipe")
    assert res.info["budget_rule"].startswith("absolute N_max") and res.visual_tokens.kept == 16
