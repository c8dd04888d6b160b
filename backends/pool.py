"""Worker pools: where runs execute. `LocalPool` is the embedded default (in-process); `RedisPool`
(backends/redis_pool.py) sends the same runs to `python app.py worker` processes on other GPUs or machines.

Protocol (what the UI and the CLI use; plain types only):
    stream = pool.compare(comparison)   -> a `Stream`: iterate it for RunResults in finishing order (each carries
                                           its `index`); `stream.summary` is a JSON-plain dict, final once iterated
    pool.catalog()                      -> the method registry as JSON-ready dicts
    pool.workers                        -> how many runs can execute at once
    pool.close()

`LocalPool` runs one worker thread per device (each CUDA device, or the CPU), each with its own model, loaded
once and reused, taking one job at a time from a shared queue: a timed run always has its device to itself.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from backends.settings import Settings
from backends.types import Comparison, RequestError, RunRequest, RunResult

log = logging.getLogger(__name__)


class PoolError(RuntimeError):
    """The pool itself cannot serve (Redis unreachable, ...): the message is shown to the caller as is."""


class TimeLimitExceeded(Exception):
    """Raised inside a run that went over its time limit; the message reads 'exceeded its N s time limit'."""


class Stream:
    """The results of one comparison, in finishing order, and a summary of them (JSON-plain).

    summary: {"pool", "runs", "ok", "failed", "order": [index, ...] as finished, "workers": {name: runs},
              "retried": runs re-run after their worker died, "wall_s", "complete": every run came back}
    """

    def __init__(self, results: Iterator[RunResult], summary: dict, cancel: Callable[[], None] | None = None):
        self._results, self.summary, self._cancel = results, summary, cancel
        self._t0 = time.perf_counter()

    @staticmethod
    def new_summary(pool: str, runs: int) -> dict:
        return {"pool": pool, "runs": runs, "ok": 0, "failed": 0, "order": [], "workers": {}, "retried": 0,
                "wall_s": 0.0, "complete": False}

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> RunResult:
        try:
            r = next(self._results)
        except StopIteration:
            self.summary["complete"] = len(self.summary["order"]) == self.summary["runs"]
            raise
        finally:
            self.summary["wall_s"] = round(time.perf_counter() - self._t0, 3)
        s = self.summary
        s["ok" if r.ok else "failed"] += 1
        s["order"].append(r.index)
        if r.worker:
            s["workers"][r.worker] = s["workers"].get(r.worker, 0) + 1
        return r

    def close(self) -> None:
        """Stop early: runs not yet started are dropped."""
        if self._cancel is not None:
            self._cancel()
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


class Pool(Protocol):
    workers: int

    def compare(self, comparison: Comparison) -> Stream: ...

    def catalog(self) -> list[dict]: ...

    def close(self) -> None: ...


def execute(req: RunRequest, models: dict, device: str | None, settings: Settings, worker: str) -> RunResult:
    """Run one request on this worker's models; never raises: failures come back as `ok: false`."""
    from backends import runner
    from backends.models import ModelLoadError, load_model

    try:
        if req.model not in models:
            models[req.model] = load_model(req.model, settings, device=device)
        result = runner.run(req, models[req.model], settings)
    except (RequestError, ModelLoadError) as e:
        result = RunResult.failed(req.method, str(e), req.index)
    except TimeLimitExceeded as e:
        result = RunResult.failed(req.method, f"{req.method.name} {e}", req.index)
    except Exception as e:  # a method that crashes must not take the comparison (or the worker) down
        log.error("run %s failed:\n%s", req.method.name, traceback.format_exc())
        result = RunResult.failed(req.method, f"{req.method.name} failed: {type(e).__name__}: {e}", req.index)
    result.index, result.worker = req.index, worker
    return result


@dataclass
class _Job:
    req: RunRequest
    out: queue.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)


class LocalPool:
    """One thread per device; `devices=["cpu", "cpu"]` gives two CPU workers (tests, or many-core hosts).

    `preload`: a model each worker loads before taking its first job (the app passes its default model).
    """

    def __init__(self, settings: Settings | None = None, devices: list[str] | None = None,
                 preload: str | None = None, inline: bool = False):
        import torch

        self.settings = settings or Settings.from_env()
        torch.set_num_threads(self.settings.threads)
        # inline: run jobs in the caller's thread, one after another. ZeroGPU runs the GPU function in a forked
        # process, where this pool's worker threads do not exist; there is one GPU there anyway.
        self.inline, self._inline_models = inline, {}
        if devices is None:
            n = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n)] or ["cpu"]
        self.devices = devices
        self.names = [f"local-{i}/{d}" for i, d in enumerate(devices)]
        self._jobs: queue.Queue = queue.Queue()
        self._threads = [] if inline else [
            threading.Thread(target=self._work, args=(d, n, preload), daemon=True, name=n)
            for d, n in zip(devices, self.names, strict=True)]
        for t in self._threads:
            t.start()

    @property
    def workers(self) -> int:
        return len(self.devices)

    def _work(self, device: str, name: str, preload: str | None) -> None:
        models: dict = {}  # loaded once per worker, reused by every job
        if preload:
            from backends.models import ModelLoadError, load_model

            try:
                models[preload] = load_model(preload, self.settings, device=device)
            except ModelLoadError as e:  # each job naming it will report the error
                log.error("%s: %s", name, e)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.cancelled.is_set():  # one job at a time: the run has this device to itself
                job.out.put(execute(job.req, models, device, self.settings, name))

    def compare(self, comparison: Comparison) -> Stream:
        out: queue.Queue = queue.Queue()
        reqs = comparison.requests()
        if self.inline:
            for i, r in enumerate(reqs):
                r.index = i
            dev, name = self.devices[0], self.names[0]
            runs = (execute(r, self._inline_models, dev, self.settings, name) for r in reqs)
            return Stream(runs, Stream.new_summary("local", len(reqs)))
        cancelled = threading.Event()
        for i, r in enumerate(reqs):
            r.index = i
        # At most one run per device in flight, and the next one submitted only when the caller asks for the next
        # result, i.e. after it has handled (drawn) the previous one: the page's drawing runs in this process and
        # would otherwise share the CPU and the GIL with the next run's timed repeats, slowing whichever method
        # follows another (it coloured keep-all runs "slower" than the baseline).
        pending = iter(reqs)
        for r in itertools.islice(pending, self.workers):
            self._jobs.put(_Job(r, out, cancelled))

        def results() -> Iterator[RunResult]:
            for k in range(len(reqs)):
                for r in itertools.islice(pending, 1 if k else 0):  # the caller is back: it has handled result k-1
                    self._jobs.put(_Job(r, out, cancelled))
                yield out.get()

        return Stream(results(), Stream.new_summary("local", len(reqs)), cancelled.set)

    def catalog(self) -> list[dict]:
        from methods import registry

        return registry.catalog()

    def close(self, wait: float = 30.0) -> None:
        """Stop the workers once the queued jobs are done; `wait` seconds at most for each to finish.

        Joining matters: a daemon thread still inside torch when the interpreter finalises is unwound through
        C++ frames and aborts the process ("terminate called without an active exception")."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(wait)
