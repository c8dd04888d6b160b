"""AirCache: uneven per-layer visual KV budgets that average `keep`, text KV untouched, exact byte counts."""

import pytest
import torch

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RequestError, RunRequest
from methods import registry
from methods.aircache import normalise, skewness, whole_budgets

S = Settings()
N, L = 64, 8  # visual tokens and decoder layers of the tiny models


def run(lm, path, params=None, name="aircache"):
    req = RunRequest(media.image_media(path, S), "how many shapes are there?", MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=4, warmup=0))
    return runner.run(req, lm, S)


def test_keep_10_percent_of_the_visual_kv(random_model, scene_png):
    base, air = run(random_model, scene_png, name="baseline"), run(random_model, scene_png, {"keep": 0.1})
    counts = air.visual_tokens.per_layer
    assert counts == air.info["layer_budgets"] and len(counts) == L
    assert len(set(counts)) > 1, "budgets must differ across layers"
    assert abs(sum(counts) / L - 0.1 * N) <= 1 and sum(counts) == round(0.1 * N * L)
    tc = random_model.adapter.text_config
    per_token_layer = 2 * tc.num_key_value_heads * random_model.adapter.head_dim * 4  # keys + values, fp32
    dropped = sum(N - k for k in counts) * per_token_layer
    assert air.memory.kv_cache_bytes_prefill == base.memory.kv_cache_bytes_prefill - dropped  # text KV all kept
    visual_after = air.memory.kv_cache_bytes_prefill - (base.memory.kv_cache_bytes_prefill - N * L * per_token_layer)
    assert abs(visual_after / (N * L * per_token_layer) - 0.1) < 1 / N
    maps = air.info["layer_maps"]
    assert [round(sum(v for row in m[0] for v in row)) for m in maps] == counts  # one map per layer, kept = budget
    mean = [[sum(m[0][r][c] for m in maps) / L for c in range(8)] for r in range(8)]
    got = [v for row in air.kept_map[0] for v in row]
    assert got == pytest.approx([v for row in mean for v in row])  # the card's map: share of layers keeping a patch
    assert air.visual_tokens.kept == N  # every visual token entered the prefill


@pytest.mark.parametrize("params", [{"heads": "max"}, {"norm": "softmax"}, {"alpha": 0.5, "keep": 0.25}])
def test_open_choices_are_parameters(random_model, scene_png, params):
    res = run(random_model, scene_png, params)
    keep = params.get("keep", 0.1)
    assert res.ok and res.params == {**registry.build(MethodSpec("aircache", {})).params(), **params}
    assert sum(res.visual_tokens.per_layer) == round(keep * N * L)
    assert all(e >= 1 for e in res.info["elite_sizes"])


def test_bad_parameters_are_refused():
    with pytest.raises(RequestError, match="alpha must be in"):
        registry.build(MethodSpec("aircache", {"alpha": 0}))
    with pytest.raises(RequestError, match="bad value 'per_head' for heads"):
        registry.build(MethodSpec("aircache", {"heads": "per_head"}))


def test_budget_arithmetic():
    share = torch.tensor([1.6, 0.2, 0.2, 0.0])  # mean 0.5 of 10 tokens: layer 0 wants 16, layer 3 none
    assert whole_budgets(share, 10, 0.5) == [10, 4, 4, 2]  # clipped to [1, 10], the 5 left shared 2:2:1
    assert whole_budgets(torch.full((8,), 1.0), 64, 1.0) == [64] * 8
    assert normalise(torch.tensor([1.0, 3.0]), "mean").tolist() == [0.5, 1.5]
    assert normalise(torch.tensor([-1.0, 2.0]), "mean").tolist() == [0.0, 2.0]
    assert normalise(torch.tensor([-1.0, 2.0]), "softmax").sum().item() == pytest.approx(2.0)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0]])  # a right tail: positive skew (the sample formula gives 2.0)
    assert skewness(x).item() == pytest.approx(2.0)
