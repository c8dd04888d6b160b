"""Registry-wide invariants, one parametrised matrix over every registered method:
keep-all reproduces the baseline token for token; kept counts follow each method's rule; hooks and patches
are gone after the run; the same seed gives the same answer."""

import math

import pytest

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RequestError, RunRequest
from methods import registry

S = Settings()
N = 64  # visual tokens of the tiny models (8 x 8 patches)
R = 0.25


def run(lm, path, name, params=None, prompt="how many shapes are there?", tokens=8):
    req = RunRequest(media.image_media(path, S), prompt, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0))
    return runner.run(req, lm, S)


def hooks(model) -> set:
    """Every forward hook, pre-hook and instance-level forward override on any module. transformers installs
    some of its own (output capturing), so tests compare this set before and after a run."""
    found = set()
    for name, mod in model.named_modules():
        found |= {(name, "hook", k) for k in mod._forward_hooks} | {(name, "pre", k) for k in mod._forward_pre_hooks}
        if "forward" in mod.__dict__:
            found.add((name, "forward", id(mod.__dict__["forward"])))
    return found


def check_rule(name: str, res) -> None:
    """The method's rule at keep = R, checked against counts computed here, not by the method."""
    cls, vt = registry.get(name), res.visual_tokens
    if cls.stage in ("baseline", "before_llm"):
        assert vt.per_layer == [vt.kept] * 8
    if name == "baseline":
        assert vt.kept == N
    elif name == "dynamic_vlm":
        assert vt.kept == math.isqrt(round(R * N)) ** 2  # floor(sqrt(M))^2 per frame
    elif name in ("prumerge", "prumerge_plus"):
        assert vt.kept == res.info["selected"][0] + 1  # selection + the token summarising the pruned ones
        assert res.info["selected"][0] >= res.info["outliers"][0]
    elif name == "fastv":
        assert vt.kept == N and vt.per_layer == [N] * 2 + [int(R * N)] * 6
    elif name == "feather":
        k1, k2 = res.info["layers"]
        s1, s2 = vt.per_layer[k1], vt.per_layer[k2]
        assert (k1, k2) == (2, 4) and vt.per_layer == [N] * k1 + [s1] * (k2 - k1) + [s2] * (8 - k2)
        assert int(R * N) <= s1 <= int(R * N) + res.info["uniform_grid"] and s2 == int(R * R * s1)
    elif name == "meteor":
        assert vt.per_layer[-1] == res.info["adaptive_kept"] and 1 <= res.info["adaptive_kept"] <= N
    elif name == "shortv":
        assert vt.per_layer.count(0) == round(19 * 8 / 32) and len(res.info["frozen_layers"]) == 5
    elif name == "twigvlm":  # the paper's R from the average budget; FinalWipe at 24 of 32 layers' depth
        k, wipe = res.info["twig"]["K"], res.info["wipe_layer"]
        r = math.ceil((8 * R * N - k * N) / (wipe - k))
        assert (k, wipe, vt.kept) == (1, 6, N) and vt.per_layer == [N] * k + [r] * (wipe - k) + [0] * (8 - wipe)
    elif name == "matvlm":  # no token removed: a quarter of the layers are Mamba-2
        assert vt.per_layer == [N] * 8 and res.info["mamba_layers"] == [0, 4]
    elif name == "aircache":  # every token is prefilled; each layer's KV keeps its budget, budgets average R x N
        assert vt.kept == N and sum(vt.per_layer) == round(R * N * 8) and vt.per_layer == res.info["layer_budgets"]
    else:
        assert cls.budget_field, f"{name}: no counting rule known to the test matrix; add one"
        assert vt.kept == round(R * N)
    assert vt.effective == sum(vt.per_layer) / 8


@pytest.fixture(scope="module")
def baseline(random_model, scene_png):
    return run(random_model, scene_png, "baseline")


@pytest.mark.parametrize("name", registry.names())
def test_keep_all_equals_baseline(name, random_model, scene_png, baseline):
    before = hooks(random_model.model)
    res = run(random_model, scene_png, name, registry.get(name).keep_all_params())
    assert res.ok and res.output_ids == baseline.output_ids
    assert res.visual_tokens.kept == N and res.kept_map == baseline.kept_map
    assert res.visual_tokens.per_layer == [N] * 8
    assert hooks(random_model.model) == before


@pytest.mark.parametrize("name", registry.names())
def test_budget_rule_hooks_removed_and_deterministic(name, random_model, scene_png, baseline):
    cls = registry.get(name)
    params = {cls.budget_field: R} if cls.budget_field else {}
    before = hooks(random_model.model)
    a = run(random_model, scene_png, name, params)
    assert a.ok, a.error
    check_rule(name, a)
    assert a.visual_tokens.input == N and len(a.kept_map) == 1 and len(a.kept_map[0]) == 8
    assert hooks(random_model.model) == before
    b = run(random_model, scene_png, name, params)
    assert b.output_ids == a.output_ids and b.kept_map == a.kept_map
    # the model is untouched afterwards: the baseline still gives the same tokens
    assert run(random_model, scene_png, "baseline").output_ids == baseline.output_ids
    if name not in ("baseline", "shortv", "matvlm"):  # these remove no token (ShortV's map: the frozen layers)
        shares = [v for row in a.kept_map[0] for v in row]
        assert min(shares) < 1.0, "the kept map must show the selection"
        assert all(0.0 <= v <= 1.0 for v in shares)


@pytest.mark.parametrize("name", registry.names())
def test_catalog_lists_paper_defaults(name):
    entry = next(e for e in registry.catalog() if e["name"] == name)
    assert entry["stage"] in ("baseline", "before_llm", "in_llm", "kv_cache", "architecture") and entry["paper"]
    for p in entry["params"]:
        assert registry.build(MethodSpec(name, {p["name"]: p["default"]})).params()[p["name"]] == p["default"]


def test_bad_parameters_are_refused():
    with pytest.raises(RequestError, match=r"random: keep must be in \(0, 1\]"):
        registry.build(MethodSpec("random", {"keep": 0}))
    with pytest.raises(RequestError, match="bad value 'lots' for keep"):
        registry.build(MethodSpec("random", {"keep": "lots"}))
    with pytest.raises(RequestError, match="one of"):
        registry.build(MethodSpec("random", {"positions": "sideways"}))
    with pytest.raises(RequestError, match="unknown parameter"):
        registry.build(MethodSpec("folder", {"r": 3}))


def test_random_seed_changes_selection(random_model, scene_png):
    a = run(random_model, scene_png, "random", {"keep": R, "seed": 1})
    b = run(random_model, scene_png, "random", {"keep": R, "seed": 2})
    assert a.kept_map != b.kept_map and a.visual_tokens.kept == b.visual_tokens.kept == 16


def test_readme_table_is_generated_from_the_registry():
    from scripts.update_readme import README, render

    text = README.read_text()
    assert render(text) == text, "README's method table is stale: run python scripts/update_readme.py"
    for name in registry.names():
        assert f"| `{name}` |" in text
