"""The Redis worker process: serves runs from `RedisPool` clients, one worker per GPU.

    REDIS_URL=redis://:password@10.0.0.5:6379/0 CUDA_VISIBLE_DEVICES=1 python app.py worker
    python app.py worker --redis redis://127.0.0.1:6379/0 --device cpu --model builtin

It loads its model once, then runs jobs in its own process (rq's `SimpleWorker`: no fork per job, so the model
stays loaded and a timed run has the device to itself). Only `run_job(<RunRequest JSON>)` runs: `RunJob`
refuses any other function a Redis client might name, and `run_job` refuses payloads that are not a valid
`RunRequest` (ok:false result). During a job a heartbeat thread keeps the job's lease `--abandon-after` seconds
ahead; if the process dies the lease lapses and the client (or any worker's 15 s maintenance) requeues the job
once (`Retry(max=1)`). A run over its time limit is interrupted (SIGALRM) and comes back ok:false.

Redis going away (a restart, a network blip) never ends the process, idle or busy: every Redis call of the work
loop rides it out, reconnecting with backoff (at most 2 s apart), then re-registers the worker if Redis lost its
record, and continues. A result that could not be stored is lost with the old Redis; the client re-submits that
run (at-least-once execution, exactly one result per run: see backends/redis_pool.py).

    python app.py worker --cleanup --redis URL     the queue's true state; stale records removed, stranded jobs requeued
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
from rq import Queue, worker_registration
from rq.job import Job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from backends import rq_upkeep
from backends.pool import PoolError, TimeLimitExceeded, execute
from backends.redis_pool import JOB_FUNC, QUEUE, SERIALIZER, connect, safe_url
from backends.settings import Settings
from backends.types import RequestError, RunRequest, RunResult, from_json, to_json

MAINTENANCE_S = 15  # rq's registry sweep (abandoned jobs, ...) on idle workers; rq's default is 600
RECONNECT_S = (0.5, 2.0)  # first and longest wait between reconnection attempts while Redis is away


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
    max_connection_wait_time = RECONNECT_S[1]  # rq's idle dequeue backs off up to 60 s: a 3 s restart cost a minute
    test_stall = 0.0  # testing aid: seconds between taking a job and starting it

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(self.abandon_after)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.test_stall:
            time.sleep(self.test_stall)
        try:
            execution = self.prepare_execution(job)
        except redis.RedisError as e:  # the job stays taken but unstarted: sweeps requeue it (rq_upkeep)
            self._ride_out(e)
            return
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), daemon=True, name="heartbeat")
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        except redis.RedisError as e:  # its result went with the old Redis: the client re-submits the run
            self._ride_out(e)
        finally:
            stop.set()
            beat.join()
        self._guard(self.set_state, WorkerStatus.IDLE)

    def _guard(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            self._ride_out(e)
            return None

    def _ride_out(self, e: Exception) -> None:
        """Wait for Redis with backoff (until it is back or the worker is told to stop), then re-register."""
        self.log.warning("Worker %s: lost Redis (%s); reconnecting", self.name, e)
        wait = RECONNECT_S[0]
        while not self._stop_requested:
            time.sleep(wait)
            try:
                self.connection.ping()
                self._register_again()
                self.log.warning("Worker %s: Redis is back; continuing", self.name)
                return
            except redis.RedisError:
                wait = min(wait * 2, RECONNECT_S[1])

    def _register_again(self) -> None:
        """Re-create this worker's record and set memberships if Redis lost them (a restart without persistence)."""
        with self.connection.pipeline(transaction=False) as p:
            p.sismember(self.redis_workers_keys, self.key)
            p.hexists(self.key, "birth")
            listed, born = p.execute()
        if listed and born:
            return
        with self.connection.pipeline() as p:
            p.hset(self.key, mapping={k: v for k, v in self.serialize().items() if v is not None})
            worker_registration.register(self, p)
            p.expire(self.key, self.worker_ttl + 60)
            p.execute()
        self.log.warning("Worker %s: registered again (Redis had lost its record)", self.name)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        if pipeline is not None:  # part of the job heartbeat's pipeline (the heartbeat thread handles errors)
            return super().heartbeat(timeout, pipeline)
        try:
            super().heartbeat(timeout)
            self._register_again()
        except redis.RedisError as e:
            self._ride_out(e)

    def run_maintenance_tasks(self):
        self._guard(super().run_maintenance_tasks)

    def clean_registries(self):
        super().clean_registries()
        for q in self.queues:  # jobs a dead worker took but never started, within 10 s instead of rq's 60-90 s
            rq_upkeep.sweep(q)

    def check_for_suspension(self, burst: bool):
        self._guard(super().check_for_suspension, burst)

    def teardown(self):
        try:
            super().teardown()
        except redis.RedisError as e:  # stopping while Redis is away: the record expires by itself
            self.log.warning("Worker %s: could not record its exit (%s)", self.name, e)

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
    p.add_argument("--cleanup", action="store_true", help="print the queue's true state (live workers, running, "
                   "stranded and failed jobs), remove stale worker records, requeue stranded jobs, and exit")
    p.add_argument("--test-sleep", type=float, default=0.0, metavar="S",
                   help="testing aid: sleep S seconds inside each job before running it")
    p.add_argument("--test-stall", type=float, default=0.0, metavar="S",
                   help="testing aid: wait S seconds between taking a job and starting it")
    return p


def _until_redis(fn, url: str, bound_s: float):
    """`fn()`, retried with backoff while Redis is unreachable for up to `bound_s` seconds: a worker (re)started
    during a Redis blip waits it out, like the app, instead of exiting. Past the bound: PoolError naming the URL."""
    deadline, wait = time.monotonic() + bound_s, RECONNECT_S[0]
    while True:
        try:
            return fn()
        except (redis.RedisError, PoolError) as e:
            if time.monotonic() + wait > deadline or str(e).startswith("bad Redis URL"):
                raise e if isinstance(e, PoolError) else PoolError(f"cannot reach Redis at {safe_url(url)}: {e}") \
                    from None
            time.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    url = args.redis or settings.redis_url
    if not url:
        print("error: no Redis URL: pass --redis URL or set REDIS_URL", file=sys.stderr)
        return 2
    bound = 0 if args.cleanup else settings.redis_outage_s
    try:  # rq sets a socket timeout that fits its blocking dequeue
        conn = _until_redis(lambda: connect(url, socket_timeout=None), url, bound)
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.cleanup:
        print("\n".join(rq_upkeep.report(Queue(args.queue, connection=conn, serializer=SERIALIZER))))
        return 0
    import torch

    from backends.models import ModelLoadError, load_model, pick_device

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

    def start() -> None:  # registering (rq's constructor and bootstrap) needs Redis: it may blink meanwhile
        # worker_ttl - 15 s is how long an idle worker blocks on the queue: it then runs maintenance if due
        worker = GpuWorker([q], connection=conn, name=name, serializer=SERIALIZER, job_class=RunJob,
                           maintenance_interval=MAINTENANCE_S, worker_ttl=MAINTENANCE_S + 15)
        worker.abandon_after, worker.test_stall = max(1, args.abandon_after), args.test_stall
        print(f"worker {name}: model {model} on {device}, queue {args.queue!r} at {safe_url(url)}",
              file=sys.stderr, flush=True)
        worker.work(logging_level="INFO", burst=args.burst)  # its loop rides out later outages itself

    try:
        _until_redis(start, url, settings.redis_outage_s)
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
