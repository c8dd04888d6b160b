"""Numbers with their noise: every timed run kept, the stop rule for repeats, confidence and FLOP-ideal."""

import statistics

from backends import media, runner
from backends.measure import MAX_REPEATS, timed_runs
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest

S = Settings()


def _run(model, path, method="baseline", params=None, **gen):
    req = RunRequest(media.image_media(path, S), "how many shapes are there?", MethodSpec(method, params or {}),
                     GenerationSettings(max_new_tokens=4, **gen))
    return runner.run(req, model, S)


def test_every_timed_run_is_reported_and_the_median_is_theirs(random_model, scene_png):
    res = _run(random_model, scene_png, repeats=3)
    assert len(res.timings_ms_all) == res.measurement["timed_runs"] == 3
    for field in ("preprocess", "vision", "prefill", "decode", "total"):
        runs = [getattr(t, field) for t in res.timings_ms_all]
        assert abs(getattr(res.timings_ms, field) - statistics.median(runs)) < 1e-9, field
    assert all(abs(t.ttft - (t.preprocess + t.vision + t.prefill)) < 1e-9 for t in res.timings_ms_all)


def test_confidence_is_a_probability_of_the_answer_tokens(random_model, scene_png):
    c = _run(random_model, scene_png).confidence
    assert set(c) == {"mean", "min"} and 0 < c["min"] <= c["mean"] <= 1


def test_flop_ideal_is_one_at_keep_all_and_grows_as_tokens_go(random_model, scene_png):
    assert _run(random_model, scene_png).flop_ideal_speedup == 1.0
    assert _run(random_model, scene_png, "random", {"keep": 1.0}).flop_ideal_speedup == 1.0
    quarter = _run(random_model, scene_png, "random", {"keep": 0.25}).flop_ideal_speedup
    tenth = _run(random_model, scene_png, "random", {"keep": 0.1}).flop_ideal_speedup
    assert 1.0 < quarter < tenth


def test_repeat_rule():
    def fake(totals):
        it = iter(totals)
        return lambda: {"times": (0, 0, 0, 0, next(it))}

    exact = GenerationSettings(repeats=2, repeat_budget_s=0.0)
    assert len(timed_runs(fake([1.0, 3.0, 1.0]), exact)) == 2  # no budget: exactly `repeats`
    noisy = GenerationSettings(repeats=2, repeat_budget_s=50.0)
    assert len(timed_runs(fake([1.0, 3.0] * 20), noisy)) == MAX_REPEATS  # never settles: capped
    budget = GenerationSettings(repeats=2, repeat_budget_s=6.5)  # noisy: runs until 7 s >= 6.5 s are spent
    assert len(timed_runs(fake([1.0, 3.0, 1.0, 1.0, 1.0, 1.0]), budget)) == 5
    stable = GenerationSettings(repeats=2, repeat_budget_s=50.0)
    assert len(timed_runs(fake([1.0, 1.05, 9.0]), stable)) == 2  # spread 5% < 10%: stop at the minimum
