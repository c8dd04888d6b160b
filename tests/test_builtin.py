"""The shipped built-in model (assets/tiny-llava-shapes): held-out answers, image dependence, what pruning
does to it, FastV's RoPE bias against FEATHER, and bitsandbytes loading with the answers it then gives.

The held-out set (assets/heldout) comes from a renderer other than the training one and a seed never used in
training. These tests use a fixed subset (the first questions of each kind), so their numbers are exact facts
of the shipped weights; the full-set numbers are in the model card.
"""

import json
from pathlib import Path

import pytest

from backends.evaluate import evaluate
from backends.media import image_media
from backends.models import load_model
from backends.settings import BUILTIN, BUILTIN_DIR, Settings
from backends.types import MethodSpec

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "assets" / "heldout" / "heldout.jsonl"
S = Settings()


def subset(per_kind: int) -> list[dict]:
    items, seen = [], {}
    for line in HELDOUT.read_text().splitlines():
        it = json.loads(line)
        if seen.get(it["kind"], 0) < per_kind:
            seen[it["kind"]] = seen.get(it["kind"], 0) + 1
            it["media"] = image_media(HELDOUT.parent / it["image"], S)
            items.append(it)
    return items


@pytest.fixture(scope="module")
def builtin():
    assert (BUILTIN_DIR / "model.safetensors").is_file(), "the built-in model is not in assets/"
    return load_model(BUILTIN, S)


@pytest.fixture(scope="module")
def items():
    return subset(24)


def test_heldout_accuracy_and_image_dependence(builtin, items):
    base, = evaluate(builtin, items, [MethodSpec("baseline")], S, 3, progress=False)
    assert base["accuracy"] >= 0.90 and min(base["by_kind"].values()) >= 0.80, base
    shuffled, = evaluate(builtin, items, [MethodSpec("baseline")], S, 3, shuffle_images=True, progress=False)
    assert shuffled["accuracy"] <= 0.55, shuffled  # near the text-only guess rate, far from the baseline


def test_pruning_hurts_in_a_method_dependent_way(builtin, items):
    specs = [MethodSpec("baseline"), MethodSpec("random", {"keep": 0.1}), MethodSpec("random", {"keep": 1.0})]
    base, rnd10, rnd100 = evaluate(builtin, items, specs, S, 3, progress=False)
    assert rnd100["agreement_with_baseline"] == 1.0
    assert rnd10["accuracy"] <= base["accuracy"] - 0.15, (base, rnd10)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_bitsandbytes_answers(bits, items):
    from backends import runner
    from backends.types import GenerationSettings, RunRequest

    lm = load_model(BUILTIN, S, quantize=bits)
    some = items[::6]
    right = sum(runner.run(RunRequest(it["media"], it["question"], MethodSpec("baseline"),
                                      GenerationSettings(max_new_tokens=3, warmup=0)), lm, S).answer == it["answer"]
                for it in some)
    assert right >= 0.8 * len(some), f"{bits}: {right}/{len(some)}"


def mean_kept_row(kept_map: list[list[float]]) -> float:
    """Weighted mean row index (0 = top) of a frame's kept-token map."""
    rows = [sum(r) for r in kept_map]
    return sum(i * w for i, w in enumerate(rows)) / sum(rows)


def test_fastv_rope_bias_and_feather_fix(builtin, items):
    """FastV ranks visual tokens by attention with RoPE, whose decay favours the tokens nearest the prompt's end:
    the image's last (bottom) rows. FEATHER scores without RoPE and adds a uniform grid."""
    from backends import runner
    from backends.types import GenerationSettings, RunRequest

    gen = GenerationSettings(max_new_tokens=1, warmup=0)
    fast, free, bands, differ = [], [], [], []
    for it in items[::2]:
        run = lambda name, p: runner.run(RunRequest(it["media"], it["question"], MethodSpec(name, p), gen),  # noqa
                                         builtin, S)
        fv = run("fastv", {"keep": 0.25, "layer": 2})
        fast.append(mean_kept_row(fv.kept_map[0]))
        # FEATHER's score alone: same layer and budget as FastV, one stage, a grid of one token
        ff = run("feather", {"keep": 0.25, "stride": 100, "stage1_layer": 2, "stage2_layer": 0})
        free.append(mean_kept_row(ff.stage_maps[0][0]))
        differ.append(fv.kept_map[0] != ff.stage_maps[0][0])
        full = run("feather", {"keep": 0.25})  # paper settings: stage 1 keeps top-k plus every 3rd row/column
        rows = [sum(r) > 0 for r in full.stage_maps[0][0]]
        bands.append(all(any(rows[a:b]) for a, b in ((0, 3), (3, 6), (6, 8))))
    fast_mean, free_mean = sum(fast) / len(fast), sum(free) / len(free)
    print(f"mean kept row (0 top, 7 bottom, centre 3.5): FastV {fast_mean:.2f}, RoPE-free {free_mean:.2f}; "
          f"kept sets differ on {sum(differ)} of {len(differ)}")
    # Measured over these 60 requests (FastV's official score): shipped weights (train-tiny's output) FastV 3.25,
    # RoPE-free 4.02, kept sets different on 60 of 60; the earlier stage-8 draw 3.65 / 3.81, stage 7 3.73 / 3.73,
    # v1 3.75 / 3.13. Which half of the image FastV favours changes from one draw of the weights to the next: on
    # this model (rope_theta 1e6, whose rotary decay over 64 image tokens is weak) the bottom-row bias FEATHER
    # corrects does not show at layer 2, so no side is asserted. What stays true is that the two scores are
    # different functions of the same layer's attention.
    assert sum(differ) >= len(differ) // 2, (sum(differ), fast_mean, free_mean)  # RoPE-free scoring is not FastV's
    assert all(bands)  # FEATHER's stage-1 tokens cover the top, middle and bottom thirds of every image


def test_cli_compare_every_method_on_an_example():
    from methods import registry
    from tests.test_cli import cli

    names = ",".join(registry.names())
    p = cli("compare", "--image", "assets/examples/three_shapes.png", "--prompt", "How many shapes are there?",
            "--methods", names, "--keep", "0.25", "--max-new-tokens", "3", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    runs = {r["method"]: r for r in doc["runs"]}
    assert doc["model"]["name"] == "builtin" and list(runs) == names.split(",") and all(r["ok"] for r in runs.values())
    assert runs["baseline"]["answer"] == "three" and runs["baseline"]["visual_tokens"]["input"] == 64
    assert runs["shortv"]["info"]["frozen_layers"] and len(runs["feather"]["stage_maps"]) == 2
