"""Worker pools: where runs execute. `LocalPool` is the embedded default (in-process).

Protocol (what the UI and the CLI use; plain types only):
    pool.compare(comparison) -> iterator of RunResult, in finishing order (each carries its `index`)
    pool.catalog()           -> the method registry as JSON-ready dicts
    pool.close()

`LocalPool` runs one worker thread per device (each CUDA device, or the CPU), each with its own loaded
model, taking one job at a time from a shared queue: a timed run always has its device to itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from backends.settings import Settings
from backends.types import Comparison, RequestError, RunRequest, RunResult

log = logging.getLogger(__name__)


class Pool(Protocol):
    def compare(self, comparison: Comparison) -> Iterator[RunResult]: ...

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
    except Exception as e:  # a method that crashes must not take the comparison (or the worker) down
        log.error("run %s failed:\n%s", req.method.name, traceback.format_exc())
        result = RunResult.failed(req.method, f"{req.method.name} failed: {type(e).__name__}: {e}", req.index)
    result.index, result.worker = req.index, worker
    return result


@dataclass
class _Job:
    req: RunRequest
    out: queue.Queue = field(default_factory=queue.Queue)


class LocalPool:
    def __init__(self, settings: Settings | None = None, devices: list[str] | None = None):
        import torch

        self.settings = settings or Settings.from_env()
        torch.set_num_threads(self.settings.threads)
        if devices is None:
            n = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n)] or ["cpu"]
        self.devices = devices
        self._jobs: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, args=(d,), daemon=True, name=f"worker-{d}")
                         for d in devices]
        for t in self._threads:
            t.start()

    @property
    def workers(self) -> int:
        return len(self.devices)

    def _work(self, device: str) -> None:
        models: dict = {}  # loaded once per worker, reused by every job
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.out.put(execute(job.req, models, device, self.settings, f"local/{device}"))

    def compare(self, comparison: Comparison) -> Iterator[RunResult]:
        out: queue.Queue = queue.Queue()
        reqs = comparison.requests()
        for i, r in enumerate(reqs):
            r.index = i
            self._jobs.put(_Job(r, out))
        for _ in reqs:
            yield out.get()

    def catalog(self) -> list[dict]:
        from methods import registry

        return registry.catalog()

    def close(self, wait: float = 30.0) -> None:
        """Stop the workers and join them. A daemon thread still inside torch when the interpreter finalises
        is unwound through C++ frames and aborts the process ("terminate called without an active exception")."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(wait)
