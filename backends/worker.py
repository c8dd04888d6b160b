"""The Redis worker process: serves runs from `RedisPool` clients, one worker per GPU.

    REDIS_URL=redis://:password@10.0.0.5:6379/0 CUDA_VISIBLE_DEVICES=1 python app.py worker
    python app.py worker --redis redis://127.0.0.1:6379/0 --device cpu --model builtin

It loads its model once, then runs jobs in its own process (rq's `SimpleWorker`: no fork per job, so the model
stays loaded and a timed run has the device to itself). Only `run_job(<RunRequest JSON>)` runs: `RunJob`
refuses any other function a Redis client might name, and `run_job` refuses payloads that are not a valid
`RunRequest` (ok:false result). During a job a heartbeat thread keeps the job's lease `--abandon-after` seconds
ahead; if the process dies the lease lapses and the client (or any worker's 15 s maintenance) requeues the job
once (`Retry(max=1)`). A run over its time limit is interrupted (SIGALRM) and comes back ok:false.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import redis
from rq import Queue
from rq.job import Job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from backends.pool import PoolError, TimeLimitExceeded, execute
from backends.redis_pool import JOB_FUNC, QUEUE, SERIALIZER, connect, safe_url
from backends.settings import Settings
from backends.types import RequestError, RunRequest, RunResult, from_json, to_json

MAINTENANCE_S = 15  # rq's registry sweep (abandoned jobs, ...) on idle workers; rq's default is 600


@dataclass
class _State:
    """This process's worker: set by `main`, read by `run_job` (rq calls it with the payload only)."""

    settings: Settings = field(default_factory=Settings.from_env)
    device: str | None = None
    name: str = ""
    models: dict = field(default_factory=dict)  # model name -> LoadedModel, loaded once
    test_sleep: float = 0.0


_STATE = _State()


def run_job(payload: str) -> str:
    """The job function: RunRequest JSON in, RunResult JSON out. Never raises for a bad run or payload."""
    w = _STATE
    try:
        req = from_json(RunRequest, payload)
    except RequestError as e:
        return to_json(RunResult(method="?", ok=False, worker=w.name,
                                 error=f"refused: the payload is not a valid RunRequest ({e})"))
    if w.test_sleep:  # testing aid (--test-sleep): a run slow enough to kill its worker mid-job
        try:
            time.sleep(w.test_sleep)
        except TimeLimitExceeded as e:
            return to_json(RunResult.failed(req.method, f"{req.method.name} {e}", req.index, w.name))
    return to_json(execute(req, w.models, w.device, w.settings, w.name))


class RefusedJob(RuntimeError):
    pass


class RunJob(Job):
    """rq imports and calls whatever function a job names; this worker runs `run_job(<one string>)` only."""

    def _execute(self):
        args, kwargs = self.args, self.kwargs
        if self.func_name != JOB_FUNC or self.instance is not None or kwargs or len(args) != 1 \
                or not isinstance(args[0], str):
            raise RefusedJob(f"refused: this worker only runs {JOB_FUNC}(<RunRequest JSON>), not {self.func_name!r}")
        return run_job(args[0])


class _RunTimeout(TimeLimitExceeded, JobTimeoutException):
    pass


class _TimeLimit(UnixSignalDeathPenalty):
    """rq's SIGALRM job timeout, raising an error whose message the caller sees as is."""

    def handle_death_penalty(self, signum, frame):
        raise _RunTimeout(f"exceeded its {self._timeout} s time limit")


class GpuWorker(SimpleWorker):
    """rq's in-process worker plus a heartbeat thread, so a dead worker's job is noticed in seconds.

    SimpleWorker leases a started job for its whole time limit + 60 s (11 min at the default 600 s): a killed
    worker's job would sit 'started' that long. Here the lease is `abandon_after` seconds, renewed by a thread
    every quarter of it while the job runs.
    """

    death_penalty_class = _TimeLimit
    abandon_after = 20

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(self.abandon_after)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), daemon=True, name="heartbeat")
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution, stop: threading.Event) -> None:
        while not stop.wait(max(0.5, self.abandon_after / 4)):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as e:  # Redis blinked: the next beat may get through before the lease ends
                self.log.warning("heartbeat for job %s failed: %s", job.id, e)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py worker", description="Serve runs from Redis (one worker per GPU).")
    p.add_argument("--redis", default=None, metavar="URL", help="Redis URL (default: $REDIS_URL)")
    p.add_argument("--device", default=None, help="cuda:0 or cpu (default: the first visible GPU, else cpu)")
    p.add_argument("--model", default=None, help="model to load at start (default: $VLM_MODEL or builtin)")
    p.add_argument("--queue", default=QUEUE)
    p.add_argument("--abandon-after", type=int, default=GpuWorker.abandon_after, metavar="S",
                   help="seconds without a heartbeat after which this worker's job counts as abandoned")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--test-sleep", type=float, default=0.0, metavar="S",
                   help="testing aid: sleep S seconds inside each job before running it")
    return p


def main(argv: list[str]) -> int:
    import torch

    from backends.models import ModelLoadError, load_model, pick_device

    args = parser().parse_args(argv)
    settings = Settings.from_env()
    url = args.redis or settings.redis_url
    if not url:
        print("error: no Redis URL: pass --redis URL or set REDIS_URL", file=sys.stderr)
        return 2
    try:
        conn = connect(url, socket_timeout=None)  # rq sets a timeout that fits its blocking dequeue
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    torch.set_num_threads(settings.threads)
    device = str(pick_device(args.device))
    model = args.model or settings.model
    name = f"{socket.gethostname()}-{os.getpid()}-{device.replace(':', '')}"
    try:
        models = {model: load_model(model, settings, device=device)}
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    global _STATE
    _STATE = _State(settings, device, name, models, args.test_sleep)
    q = Queue(args.queue, connection=conn, serializer=SERIALIZER, job_class=RunJob)
    # worker_ttl - 15 s is how long an idle worker blocks on the queue: it then runs maintenance if due
    worker = GpuWorker([q], connection=conn, name=name, serializer=SERIALIZER, job_class=RunJob,
                       maintenance_interval=MAINTENANCE_S, worker_ttl=MAINTENANCE_S + 15)
    worker.abandon_after = max(1, args.abandon_after)
    print(f"worker {name}: model {model} on {device}, queue {args.queue!r} at {safe_url(url)}", file=sys.stderr,
          flush=True)
    worker.work(logging_level="INFO", burst=args.burst)
    return 0
