"""`RedisPool`: runs go to `python app.py worker` processes through Redis with rq 3.0 (selected by `REDIS_URL`).

    pool = RedisPool(settings, "redis://:password@10.0.0.5:6379/0")
    for result in pool.compare(comparison): ...    # finishing order, like LocalPool

Wire format: rq's JSONSerializer only (never pickle). A job is `backends.worker.run_job(<RunRequest JSON>)`, its
return value the RunResult JSON; the worker refuses any other function or payload. Each job carries an explicit
time limit (`settings.job_timeout`) and `Retry(max=1)`: a job whose worker died is run once more elsewhere.
While it waits, the client sweeps rq's records itself (`rq_upkeep.sweep`), so a killed worker's job is requeued
as soon as its heartbeat lease lapses (`--abandon-after`, 20 s), and a job a worker took but died before starting
within 10 s, rather than at rq's 10-minute maintenance.

Delivery: at-least-once execution, exactly one result per run. A Redis outage of up to `settings.redis_outage_s`
(30 s) is ridden out: the client retries with backoff, and when Redis is back, re-submits the runs whose jobs
vanished (a restarted Redis without persistence has lost them; the client still holds their requests). A run
may then execute twice (its old worker may finish it for nobody), but only one result is ever yielded for it.
Nothing hangs: a job no live worker takes within `pickup_timeout` seconds, an outage past the bound, or a worker
dying twice each end the run with a message; queued jobs of an abandoned comparison are cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from backends import rq_upkeep
from backends.pool import PoolError, Stream
from backends.settings import Settings
from backends.types import Comparison, RequestError, RunRequest, RunResult, from_json, to_json

QUEUE = "vlm"
JOB_FUNC = "backends.worker.run_job"  # the only function a worker runs (backends/worker.py)
SERIALIZER = JSONSerializer
RESULT_TTL = 600  # seconds results (and failures) stay readable in Redis after a run
REAP_EVERY = 2.0  # seconds between the client's sweeps for abandoned jobs while some are running
HUNG_GRACE = 60  # a job still running this long past its time limit is given up on (its worker is hung)
OUTAGE_BACKOFF = (0.1, 2.0)  # first and longest wait between attempts while Redis is unreachable
MAX_RESUBMITS = 3  # a run whose job vanishes more often than this (Redis restarting in a loop) fails


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def connect(url: str, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A checked connection: a bad or unreachable URL raises `PoolError` naming it (password masked)."""
    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=socket_timeout)
        conn.ping()
    except ValueError as e:
        raise PoolError(f"bad Redis URL {safe_url(url)!r}: {e}") from None
    except redis.RedisError as e:
        raise PoolError(f"cannot reach Redis at {safe_url(url)}: {e}") from None
    return conn


@dataclass
class _Run:
    """One run of a comparison as the client tracks it: its request, its current job (None: not yet submitted,
    or its job vanished with a restarted Redis) and how often it was re-submitted."""

    req: RunRequest
    job: Job | None = None
    resubmits: int = 0


@dataclass
class _Wait:
    """The collector's clocks: last progress (a state change), last sweep, an outage's start, the next backoff."""

    progress: float
    reaped: float = 0.0
    outage: float | None = None
    backoff: float = OUTAGE_BACKOFF[0]
    status: dict = field(default_factory=dict)  # run index -> last status seen


class RedisPool:
    def __init__(self, settings: Settings | None = None, url: str | None = None, queue: str = QUEUE,
                 pickup_timeout: float = 60.0, poll_s: float = 0.05, reap_every: float = REAP_EVERY):
        self.settings = settings or Settings.from_env()
        self.url = url or self.settings.redis_url
        if not self.url:
            raise PoolError("no Redis URL: pass --redis URL or set REDIS_URL")
        self.conn = connect(self.url)
        self.queue = Queue(queue, connection=self.conn, serializer=SERIALIZER)
        self.pickup_timeout, self.poll_s, self.reap_every = pickup_timeout, poll_s, reap_every

    @property
    def workers(self) -> int:
        """Live workers now (at least 1: the UI sizes its queue with this)."""
        try:
            return max(1, len(rq_upkeep.live_workers(self.queue)))
        except redis.RedisError:
            return 1

    def compare(self, comparison: Comparison) -> Stream:
        reqs = comparison.requests()
        runs = {}
        for i, r in enumerate(reqs):
            r.index = i
            runs[i] = _Run(r)
        try:  # submit now; if Redis is away, the collector submits once it is back
            self._submit(runs)
        except redis.RedisError:
            pass
        summary = Stream.new_summary("redis", len(reqs))
        summary["resubmitted"] = 0  # runs submitted again after their job vanished (Redis restarted meanwhile)
        return Stream(self._collect(runs, summary), summary, lambda: self._cancel(runs))

    def _submit(self, runs: dict[int, _Run]) -> None:
        for run in runs.values():
            if run.job is None:
                r = run.req
                run.job = self.queue.enqueue(JOB_FUNC, to_json(r), job_timeout=self.settings.job_timeout,
                                             result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, retry=Retry(max=1),
                                             description=f"{r.method.name} (run {r.index})")

    def _lost(self, e: Exception) -> PoolError:
        return PoolError(f"lost the connection to Redis at {safe_url(self.url)}: {e}")

    def _collect(self, runs: dict[int, _Run], summary: dict) -> Iterator[RunResult]:
        """Poll the jobs' states (one round trip per poll) and yield each result as its job ends; ride out Redis
        outages up to the bound, re-submitting runs whose jobs vanished."""
        w = _Wait(time.monotonic())
        try:
            while runs:
                try:
                    yield from self._poll(runs, summary, w)
                except redis.RedisError as e:
                    now = time.monotonic()
                    w.outage = w.outage or now
                    if now - w.outage > self.settings.redis_outage_s:
                        raise self._lost(e) from None
                    time.sleep(w.backoff)
                    w.backoff = min(w.backoff * 2, OUTAGE_BACKOFF[1])
                    continue
                if runs:
                    time.sleep(self.poll_s)
        finally:
            self._cancel(runs)

    def _poll(self, runs: dict[int, _Run], summary: dict, w: _Wait) -> Iterator[RunResult]:
        """One round: submit what needs it, read every job's state, yield the runs that ended."""
        self._submit(runs)
        with self.conn.pipeline(transaction=False) as p:
            for run in runs.values():
                p.hmget(run.job.key, "status", "started_at")
            states = dict(zip(list(runs), p.execute()))
        now = time.monotonic()
        if w.outage is not None:  # Redis is back: workers need a moment to reconnect and re-register
            w.outage, w.backoff, w.progress = None, OUTAGE_BACKOFF[0], now
        if now - w.reaped > self.reap_every:
            rq_upkeep.sweep(self.queue)
            w.reaped = now
        limit = self.settings.job_timeout + HUNG_GRACE
        for i, (raw_status, raw_started) in states.items():
            run = runs[i]
            status = raw_status.decode() if raw_status else None
            if w.status.get(i) != status:  # taken, requeued after its worker died, or ended
                w.status[i], w.progress = status, now
            if status in ("queued", "deferred", "scheduled"):
                continue
            if status == "started":
                started = utcparse(raw_started.decode()) if raw_started else None
                if started is None or (datetime.now(UTC) - started).total_seconds() < limit:
                    continue
                result = RunResult.failed(run.req.method, f"{run.req.method.name}: no result within {limit} s of "
                                          "its start (its worker seems hung)", run.req.index)
            else:
                result = self._finished(run, status, summary)
                if result is None:  # vanished with a restarted Redis: submit it again
                    run.job, run.resubmits = None, run.resubmits + 1
                    summary["resubmitted"] += 1
                    w.status.pop(i, None)
                    continue
            del runs[i]
            yield result
        waiting = [i for i in runs if w.status.get(i) != "started"]
        if waiting and now - w.progress > self.pickup_timeout:
            why = self._no_worker_message()
            for i in waiting:
                run = runs.pop(i)
                self._cancel({i: run})
                yield RunResult.failed(run.req.method, why, run.req.index)

    def _finished(self, run: _Run, status: str | None, summary: dict) -> RunResult | None:
        """The RunResult of a job that ended (finished, failed, stopped), or None if it vanished from Redis and
        may be submitted again."""
        job, req = run.job, run.req
        res = Result.fetch_latest(job, serializer=SERIALIZER)
        try:
            job.refresh()
        except NoSuchJobError:  # gone, or only a stray field re-created by its old worker after a restart
            if res is None or res.type != Result.Type.SUCCESSFUL:
                if run.resubmits < MAX_RESUBMITS:
                    return None
                return RunResult.failed(req.method, f"{req.method.name}: the job vanished from Redis "
                                        f"{run.resubmits + 1} times (expired or deleted, or Redis restarted)",
                                        req.index)
            status = "finished"
        if status is None:  # a record without a status: its data is gone
            return None if run.resubmits < MAX_RESUBMITS else RunResult.failed(
                req.method, f"{req.method.name}: the job vanished from Redis", req.index)
        if job.retries_left == 0:
            summary["retried"] += 1
        worker = res.worker_name if res is not None else ""
        if status == "finished":
            if res is None or res.type != Result.Type.SUCCESSFUL:
                return RunResult.failed(req.method, f"{req.method.name}: its result expired before it was read",
                                        req.index)
            try:
                result = from_json(RunResult, res.return_value)
            except RequestError as e:
                return RunResult.failed(req.method, f"{req.method.name}: unreadable result from the worker: {e}",
                                        req.index, worker)
            result.index = req.index
            return result
        exc = (res.exc_string if res is not None else None) or job.exc_info or ""
        if "AbandonedJobError" in exc:
            why = "its worker died mid-run, and so did the retry on another worker"
        elif status != "failed":
            why = f"the job was {status}"
        else:
            lines = [ln for ln in exc.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else "the job failed without a message"
        return RunResult.failed(req.method, f"{req.method.name}: {why}", req.index, worker)

    def _no_worker_message(self) -> str:
        try:
            n = len(rq_upkeep.live_workers(self.queue))
        except redis.RedisError:
            n = 0
        who = (f"no live worker is listening on queue '{self.queue.name}'" if n == 0
               else f"all {n} live workers stayed busy")
        return (f"no worker took the job within {self.pickup_timeout:g} s ({who} at {safe_url(self.url)}; "
                f"start one with: python app.py worker --redis URL)")

    def _cancel(self, runs: dict[int, _Run]) -> None:
        """Best effort: cancel jobs no worker has started (the caller stopped waiting for them)."""
        for run in list(runs.values()):
            try:
                if run.job is not None and run.job.get_status(refresh=True) == "queued":
                    run.job.cancel()
            except Exception:  # Redis gone or the job just started/ended: nothing left to cancel
                pass

    def catalog(self) -> list[dict]:
        from methods import registry

        return registry.catalog()

    def close(self) -> None:
        self.conn.close()
