"""MaTVLM: the Mamba-2 mixer against its recurrence, its initialisation from attention, the swap (KV bytes fall,
state bytes reported, attention restored after), hybrid files, and the distilled built-in hybrid's answers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backends import media, runner
from backends.models import load_model
from backends.pool import execute
from backends.settings import BUILTIN, BUILTIN_DIR, Settings
from backends.tiny.hybrid import HYBRID_FILE, Mamba2Mixer, mamba_layers
from backends.types import GenerationSettings, MethodSpec, RunRequest

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "assets" / "heldout" / "heldout.jsonl"
S = Settings()


def run(lm, image, name, params=None, prompt="how many shapes are there?", tokens=8, follow_ups=()):
    req = RunRequest(media.image_media(image, S), prompt, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0), follow_ups=list(follow_ups))
    return runner.run(req, lm, S)


def recurrence(m: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 one token at a time, written from its definition (s_t = exp(dt A) s_{t-1} + dt x_t B_t^T)."""
    a, b, w = m.d_inner, m.d_xb, m.conv1d.kernel_size[0]
    z, xbc, dt = m.in_proj(u[0]).split([a, 2 * b + a, m.h], -1)  # [L, .]
    padded = torch.cat([torch.zeros(w - 1, xbc.shape[1]), xbc])
    s, out = torch.zeros(m.h, m.p, m.n), []
    for t in range(u.shape[1]):
        c = F.silu((padded[t:t + w].T * m.conv1d.weight[:, 0]).sum(-1) + m.conv1d.bias)
        x, bm, cm = c.split([b, b, a])
        rep = m.h // m.hkv
        x, bm, cm = x.view(m.hkv, m.p).repeat_interleave(rep, 0), bm.view(m.hkv, m.n).repeat_interleave(rep, 0), \
            cm.view(m.h, m.n)
        d = F.softplus(dt[t] + m.dt_bias)  # [H]
        s = torch.exp(d * -torch.exp(m.A_log))[:, None, None] * s + d[:, None, None] * x[:, :, None] * bm[:, None]
        y = (s @ cm[:, :, None])[..., 0] + m.D[:, None] * x  # [H, P]
        y = y * F.silu(z[t]).view(m.h, m.p)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.eps)
        out.append(m.out_proj(y.reshape(a) * m.norm_weight))
    return torch.stack(out)[None]


def test_mixer_equals_its_recurrence_whole_and_in_chunks():
    torch.manual_seed(0)
    m = Mamba2Mixer(64, heads=4, kv_heads=2, head_dim=16)  # grouped-query shape: x and B repeated per head
    with torch.no_grad():
        m.in_proj.weight.mul_(3)  # larger dt and states than the defaults give: a harder check
    u = torch.randn(1, 23, 64)
    with torch.no_grad():
        ref, whole = recurrence(m, u), m(u)[0]
        a, st = m(u[:, :9])
        b, st = m(u[:, 9:10], st)
        c, _ = m(u[:, 10:], st)
    torch.testing.assert_close(whole, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([a, b, c], 1), ref, atol=1e-4, rtol=1e-4)


def test_mixer_starts_from_the_attention_weights(random_model):
    layers, cfg = random_model.adapter.layers, random_model.adapter.text_config
    assert mamba_layers(8) == [0, 4] and mamba_layers(32) == list(range(0, 32, 4))
    attn = layers[4].self_attn
    m = Mamba2Mixer.from_attention(attn, cfg)
    w, a, b = m.in_proj.weight, m.d_inner, m.d_xb
    assert torch.equal(w[a:a + b], attn.v_proj.weight) and torch.equal(w[a + b:a + 2 * b], attn.k_proj.weight)
    assert torch.equal(w[a + 2 * b:2 * a + 2 * b], attn.q_proj.weight)
    assert torch.equal(m.out_proj.weight, attn.o_proj.weight)


def test_swap_lowers_kv_reports_state_and_restores_attention(random_model, scene_png):
    layers = random_model.adapter.layers
    before = [layer.self_attn for layer in layers]
    base = run(random_model, scene_png, "baseline", follow_ups=["what color is the circle?"])
    hyb = run(random_model, scene_png, "matvlm", follow_ups=["what color is the circle?"])
    assert hyb.ok, hyb.error
    assert [layer.self_attn for layer in layers] == before  # every attention module back in place
    assert all(not type(a).__name__.startswith("Mamba") for a in before)
    # after the same prefill, the two Mamba-2 layers hold no keys or values: 6 of 8 layers' bytes
    assert hyb.memory.kv_cache_bytes_prefill * 8 == base.memory.kv_cache_bytes_prefill * 6
    cfg = random_model.adapter.text_config
    heads, p = cfg.num_attention_heads, cfg.head_dim
    conv = (heads * p + 2 * cfg.num_key_value_heads * p) * 3 * 4  # channels x (width 4 - 1) x float32
    assert hyb.info["mamba_state_bytes"] == 2 * (conv + heads * p * p * 4) and hyb.info["mamba_layers"] == [0, 4]
    assert len(hyb.turns) == 2 and hyb.turns[1].output_ids  # a follow-up continues from the carried state
    one = run(random_model, scene_png, "matvlm", {"layers": "4"})
    assert one.info["mamba_layers"] == [4] and one.memory.kv_cache_bytes_prefill * 8 == \
        base.memory.kv_cache_bytes_prefill * 7


def test_missing_or_wrong_hybrid_is_one_line(random_model_dir, scene_png, tmp_path):
    bare = tmp_path / "no-hybrid"
    shutil.copytree(random_model_dir, bare)
    (bare / HYBRID_FILE).unlink()
    models: dict = {}

    def one(name, params=None):
        req = RunRequest(media.image_media(scene_png, S), "how many shapes are there?", MethodSpec(name, params or {}),
                         GenerationSettings(max_new_tokens=4, warmup=0), model=str(bare))
        return execute(req, models, None, S, "test")

    res = one("matvlm")
    assert not res.ok and res.error.startswith(f"matvlm: no hybrid file at {bare / HYBRID_FILE}")
    assert "\n" not in res.error and one("baseline").ok
    (bare / HYBRID_FILE).write_bytes(b"\x00" * 40)
    assert one("matvlm").error.startswith("matvlm: cannot read the hybrid file")
    shutil.copy(Path(random_model_dir) / HYBRID_FILE, bare / HYBRID_FILE)
    assert one("matvlm", {"layers": "2"}).error == "matvlm: layers [2] are not all distilled (the hybrid has [0, 4])"
    assert one("matvlm").ok


def test_official_hybrid_is_explained(random_model):
    from methods.matvlm import hybrid_for

    class Hub:  # a model loaded from a hub id: no folder to hold a hybrid
        config = type("C", (), {"_name_or_path": "llava-hf/llava-1.5-7b-hf"})()

    with pytest.raises(ValueError, match="TinyLLaVA-Phi-2-SigLIP .* would take a TinyLLaVA"):
        hybrid_for(Hub(), "")


@pytest.fixture(scope="module")
def builtin():
    assert (BUILTIN_DIR / HYBRID_FILE).is_file(), "the built-in model's hybrid is not in assets/"
    return load_model(BUILTIN, S)


def test_builtin_hybrid_answers_like_the_model(builtin):
    """The distilled hybrid against the model on the first held-out items of every v1 kind and the first
    descriptions of two or more objects: answer score (exact match; object-level F1 for descriptions) >= 90%."""
    from backends.evaluate import answer_f1

    items, seen = [], {}
    for line in HELDOUT.read_text().splitlines():
        it = json.loads(line)
        if seen.get(it["kind"], 0) < 4:
            seen[it["kind"]] = seen.get(it["kind"], 0) + 1
            items.append(it)
    describe = HELDOUT.parent / "describe.jsonl"
    if describe.is_file():
        items += [it for it in map(json.loads, describe.read_text().splitlines()) if " and " in it["answer"]][:8]
    score: dict = {}
    for it in items:
        group = "describe" if it["kind"] == "describe" else "v1 kinds"
        for name in ("baseline", "matvlm"):
            res = run(builtin, HELDOUT.parent / it["image"], name, prompt=it["question"], tokens=48)
            score.setdefault(group, {}).setdefault(name, 0.0)
            score[group][name] += answer_f1(res.answer, it["answer"])
    for group, s in score.items():
        assert s["matvlm"] >= 0.9 * s["baseline"], (group, score)
