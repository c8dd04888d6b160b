"""TwigVLM: lossless self-speculative decoding, the paper's R formula, twig files (ours and the official layout).

The built-in model's tests use its shipped twig (assets/tiny-llava-shapes/twig.safetensors) on held-out items;
the rest use the random test model, whose untrained twig conftest writes."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backends import media, runner
from backends.models import load_model
from backends.pool import execute
from backends.settings import BUILTIN, BUILTIN_DIR, Settings
from backends.tiny.twig import TWIG_FILE, TwigError, load_twig, twig_file
from backends.types import GenerationSettings, MethodSpec, RunRequest
from methods.twigvlm import retained

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "assets" / "heldout" / "heldout.jsonl"
DESCRIBE = HELDOUT.parent / "describe.jsonl"
S = Settings()


def run(lm, image, name, params=None, prompt="how many shapes are there?", tokens=8, follow_ups=()):
    req = RunRequest(media.image_media(image, S), prompt, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0), follow_ups=list(follow_ups))
    return runner.run(req, lm, S)


def heldout(n: int) -> list[dict]:
    """The first n held-out descriptions of two or more objects (v2's describe set), else of the v1 set."""
    if DESCRIBE.is_file():
        items = [json.loads(line) for line in DESCRIBE.read_text().splitlines()]
        return [it for it in items if " and " in it["answer"]][:n]
    return [json.loads(line) for line in HELDOUT.read_text().splitlines()][:n]


@pytest.fixture(scope="module")
def builtin():
    assert (BUILTIN_DIR / TWIG_FILE).is_file(), "the built-in model's twig is not in assets/"
    return load_model(BUILTIN, S)


def test_the_papers_retained_counts():
    # LLaVA-1.5-7B: L = 32, K = 2, FinalWipe at 24, M = 576; R_avg = 64 / 128 / 192 give R = 41 / 134 / 227
    assert [retained(r / 576, 576, 32, 2, 24) for r in (64, 128, 192)] == [41, 134, 227]
    assert retained(0.05, 576, 32, 2, 24) == 0 and retained(1.0, 576, 32, 2, 24) == 576  # clipped to [0, M]


def test_speculation_reproduces_the_baseline_on_heldout(builtin):
    accepted, drafted = 0, 0
    for it in heldout(6):
        image = HELDOUT.parent / it["image"]
        base = run(builtin, image, "baseline", prompt=it["question"], tokens=48)
        spec = run(builtin, image, "twigvlm", {"prune": False}, prompt=it["question"], tokens=48)
        assert spec.ok, spec.error
        assert spec.output_ids == base.output_ids, it["question"]
        assert spec.memory.kv_cache_bytes == base.memory.kv_cache_bytes  # the cache holds what was fed, no more
        info = spec.info
        assert 0.0 <= info["acceptance_rate"] <= 1.0 and info["tokens_per_base_pass"] >= 1.0
        assert info["accepted"] <= info["drafted"] and info["draft_rounds"] <= len(spec.output_ids)
        accepted, drafted = accepted + info["accepted"], drafted + info["drafted"]
    assert accepted > 0, f"the twig's drafts were never accepted ({drafted} drafted)"


def test_speculation_is_lossless_across_follow_ups(builtin):
    it = heldout(1)[0]
    image, ups = HELDOUT.parent / it["image"], ["how many shapes are there?", "what color is the circle?"]
    base = run(builtin, image, "baseline", prompt=it["question"], tokens=24, follow_ups=ups)
    spec = run(builtin, image, "twigvlm", {"prune": False}, prompt=it["question"], tokens=24, follow_ups=ups)
    assert [t.output_ids for t in spec.turns] == [t.output_ids for t in base.turns]
    assert [t.memory.kv_cache_bytes for t in spec.turns] == [t.memory.kv_cache_bytes for t in base.turns]


@pytest.mark.parametrize("keep,wipe", [(0.25, -1), (1 / 3, -1), (0.5, -1), (0.25, 0), (0.1, -1)])
def test_kept_counts_follow_the_r_formula(builtin, keep, wipe):
    it = heldout(1)[0]
    res = run(builtin, HELDOUT.parent / it["image"], "twigvlm", {"keep": keep, "wipe_layer": wipe},
              prompt=it["question"])
    assert res.ok, res.error
    k, n, m = res.info["twig"]["K"], 8, 64
    kf = 6 if wipe == -1 else n  # 24 of 32 layers, scaled; 0: no FinalWipe
    r = max(0, min(m, math.ceil((n * keep * m - k * m) / (kf - k) - 1e-9)))
    assert res.info["retained"] == r
    assert res.visual_tokens.per_layer == [m] * k + [r] * (kf - k) + [0] * (n - kf)
    assert abs(res.visual_tokens.effective - keep * m) <= (kf - k) / n or r in (0, m)  # R_avg up to R's rounding


def _official_layout(model, folder: Path, t: int = 3, extra: bool = True) -> dict:
    """Random tensors under the official twig's key names (a small Llama: model.layers.i.*, model.norm, lm_head),
    no metadata, as MILVLG/twigvlm's loader reads them; plus a twig++ extra that loaders skip."""
    torch.manual_seed(1)
    cfg = model.config.text_config
    d, f, v, h = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_attention_heads * cfg.head_dim
    shapes = {"self_attn.q_proj.weight": (h, d), "self_attn.k_proj.weight": (h, d), "self_attn.v_proj.weight": (h, d),
              "self_attn.o_proj.weight": (d, h), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
              "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
    tensors = {f"model.layers.{i}.{k}": torch.randn(s) for i in range(t) for k, s in shapes.items()}
    tensors.update({"model.norm.weight": torch.randn(d), "lm_head.weight": torch.randn(v, d)})
    if extra:
        tensors["leaf_proj.weight"] = torch.randn(4, d)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def test_official_twig_folder_loads_with_its_key_names(random_model, scene_png, tmp_path):
    tensors = _official_layout(random_model.model, tmp_path / "twig-K2-T3")
    twig = load_twig(random_model.model, twig_file(None, str(tmp_path / "twig-K2-T3")))
    assert (twig.k, twig.t) == (2, 3)  # the published twig's K (the official code's default) and its 3 layers
    assert torch.equal(twig.layers[2].self_attn.q_proj.weight, tensors["model.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(twig.layers[0].mlp.down_proj.weight, tensors["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(twig.head.weight, tensors["lm_head.weight"]) and torch.equal(twig.norm.weight,
                                                                                   tensors["model.norm.weight"])
    res = run(random_model, scene_png, "twigvlm", {"twig_path": str(tmp_path / "twig-K2-T3"), "keep": 0.5})
    assert res.ok, res.error
    assert res.info["twig"] == {"K": 2, "T": 3} and res.visual_tokens.per_layer[:2] == [64, 64]


def test_wrong_or_missing_twig_is_one_line_and_other_runs_unaffected(random_model_dir, scene_png, tmp_path):
    bare = tmp_path / "no-twig"
    shutil.copytree(random_model_dir, bare)
    (bare / TWIG_FILE).unlink()
    with pytest.raises(TwigError, match="twig_path"):  # a hub model (no folder) and no twig_path
        twig_file("llava-hf/llava-1.5-7b-hf", "")
    models: dict = {}

    def one(name, params=None, model=str(bare)):
        req = RunRequest(media.image_media(scene_png, S), "how many shapes are there?", MethodSpec(name, params or {}),
                         GenerationSettings(max_new_tokens=4, warmup=0), model=model)
        return execute(req, models, None, S, "test")

    missing = one("twigvlm")
    assert not missing.ok and missing.error.startswith(f"twigvlm: no twig file at {bare / TWIG_FILE}")
    assert "\n" not in missing.error
    assert one("fastv", {"keep": 0.5}).ok and one("baseline").ok  # the comparison's other runs
    (bare / TWIG_FILE).write_bytes(b"not a safetensors file")
    assert one("twigvlm").error.startswith("twigvlm: cannot read the twig file")
    small = {k: v[..., :8].contiguous() if k == "lm_head.weight" else v for k, v in _official_layout(
        models[str(bare)].model, tmp_path / "x", t=2, extra=False).items()}
    save_file(small, str(bare / TWIG_FILE))
    err = one("twigvlm").error
    assert err.startswith("twigvlm: ") and "does not fit this model: lm_head.weight" in err and "\n" not in err
    assert one("twigvlm", {"prune": False, "speculate": False}).ok  # neither part on: no twig needed


def test_speculation_is_lossless_on_the_pruned_model_too(random_model, scene_png):
    # the random model's untrained twig rarely reaches p 0.6: threshold 0 drafts the full 5 at every round
    ups = ["what color is the circle?"]
    plain = run(random_model, scene_png, "twigvlm", {"speculate": False, "keep": 0.25}, tokens=16, follow_ups=ups)
    spec = run(random_model, scene_png, "twigvlm", {"threshold": 0.0, "keep": 0.25}, tokens=16, follow_ups=ups)
    assert [t.output_ids for t in spec.turns] == [t.output_ids for t in plain.turns]
    assert [t.memory.kv_cache_bytes for t in spec.turns] == [t.memory.kv_cache_bytes for t in plain.turns]
    assert spec.visual_tokens.per_layer == plain.visual_tokens.per_layer and spec.info["drafted"] > 0
