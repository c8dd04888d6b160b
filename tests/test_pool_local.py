"""LocalPool, the in-process default: results stream in finishing order, runs spread over the workers, and a
worker never runs two jobs at once. Runs are real (tiny random model); the only test-only piece is a method
that sleeps before the LLM, so one run is measurably slower than the others."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from backends import media
from backends.pool import LocalPool
from backends.settings import Settings
from backends.types import Comparison, GenerationSettings, MethodSpec
from methods import registry
from methods.base import Method

SPANS: list[tuple[str, float, float]] = []  # (worker thread, start, end) of every Sleepy run
STARTED: list[float] = []  # start time of every Sleepy run, appended as it starts


@dataclass
class Sleepy(Method):
    """Test-only: the baseline, after sleeping `seconds` before the LLM (registered by the fixture only)."""

    name = "test-sleepy"
    summary = "test only"
    seconds: float = 0.0

    def reduce(self, state) -> None:
        t0 = time.monotonic()
        STARTED.append(t0)
        time.sleep(self.seconds)
        SPANS.append((threading.current_thread().name, t0, time.monotonic()))


@pytest.fixture
def sleepy():
    registry.register(Sleepy)
    SPANS.clear()
    STARTED.clear()
    yield
    registry._REGISTRY.pop(Sleepy.name, None)  # no public unregister: keep the registry as other tests expect it


def comparison(image: str, model: str, specs: list[MethodSpec]) -> Comparison:
    return Comparison(media.image_media(image, Settings()), "how many shapes are there?", specs,
                      GenerationSettings(max_new_tokens=3, warmup=0), model)


def test_streams_in_finishing_order_one_job_per_worker(sleepy, random_model_dir, scene_png):
    pool = LocalPool(Settings(), devices=["cpu", "cpu"], preload=random_model_dir)
    try:
        warm = list(pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")] * 2)))
        assert [r.ok for r in warm] == [True, True]
        SPANS.clear()
        seconds = [2.0, 0.1, 0.1, 0.1]  # run 0 is slow; runs 1-3 are submitted after it
        stream = pool.compare(comparison(scene_png, random_model_dir,
                                         [MethodSpec("test-sleepy", {"seconds": s}) for s in seconds]))
        results = list(stream)
    finally:
        pool.close(wait=30)
    assert [r.index for r in results] == [1, 2, 3, 0]  # finishing order: the slow run comes back last
    assert all(r.ok for r in results) and {r.method for r in results} == {"test-sleepy"}
    assert len({r.answer for r in results}) == 1  # sleeping changes nothing else
    workers = {r.worker for r in results}
    assert workers == {"local-0/cpu", "local-1/cpu"}
    slow = results[-1].worker
    assert [r.worker for r in results[:3]] == [workers.difference({slow}).pop()] * 3  # the other took the rest
    assert stream.summary == {"pool": "local", "runs": 4, "ok": 4, "failed": 0, "order": [1, 2, 3, 0],
                              "workers": {slow: 1, workers.difference({slow}).pop(): 3}, "retried": 0,
                              "wall_s": stream.summary["wall_s"], "complete": True}
    assert len(SPANS) == 4
    for name in ("local-0/cpu", "local-1/cpu"):  # a worker never overlaps its own jobs
        spans = sorted((a, b) for n, a, b in SPANS if n == name)
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))
    (slow_span,) = [s for s in SPANS if s[2] - s[1] >= 2.0]
    assert all(s[1] < slow_span[2] for s in SPANS)  # ...but the two workers did run at the same time


def test_failing_run_comes_back_and_closing_drops_queued_runs(sleepy, random_model_dir, scene_png):
    pool = LocalPool(Settings(), devices=["cpu"])
    try:
        results = list(pool.compare(comparison(scene_png, random_model_dir,
                                               [MethodSpec("nosuch"), MethodSpec("baseline")])))
        assert [r.index for r in results] == [0, 1]
        assert not results[0].ok and results[0].error.startswith("unknown method 'nosuch'; known: baseline")
        assert results[1].ok and results[1].worker == "local-0/cpu"
        stream = pool.compare(comparison(scene_png, random_model_dir,
                                         [MethodSpec("test-sleepy", {"seconds": s}) for s in (0.3, 0.3, 0.3)]))
        first = next(stream)
        time.sleep(0.5)
        assert len(STARTED) == 1  # the next run waits until the caller asks for it (its drawing never overlaps)
        second = next(stream)
        stream.close()  # the caller stops listening: run 2 never starts
    finally:
        pool.close(wait=30)
    assert first.index == 0 and first.ok and second.index == 1 and second.ok
    assert len(SPANS) == 2
    assert stream.summary["complete"] is False and stream.summary["order"] == [0, 1]


def test_inline_pool_runs_in_the_callers_thread(random_model_dir, scene_png):
    """ZeroGPU mode: no worker threads; runs execute one after another in the calling thread."""
    import threading

    from backends import media
    from backends.pool import LocalPool
    from backends.settings import Settings
    from backends.types import Comparison, GenerationSettings, MethodSpec

    s = Settings()
    before = threading.active_count()
    pool = LocalPool(s, inline=True)
    assert threading.active_count() == before and pool.workers == 1
    comp = Comparison(media.image_media(scene_png, s), "how many shapes are there?",
                      [MethodSpec("baseline"), MethodSpec("random", {"keep": 0.5})],
                      GenerationSettings(max_new_tokens=2, warmup=0), random_model_dir)
    stream = pool.compare(comp)
    results = list(stream)
    assert [r.index for r in results] == [0, 1] and all(r.ok for r in results) and stream.summary["complete"]
    pool.close()
