"""`RedisPool`: runs go to `python app.py worker` processes through Redis with rq 3.0 (selected by `REDIS_URL`).

    pool = RedisPool(settings, "redis://:password@10.0.0.5:6379/0")
    for result in pool.compare(comparison): ...    # finishing order, like LocalPool

Wire format: rq's JSONSerializer only (never pickle). A job is `backends.worker.run_job(<RunRequest JSON>)`, its
return value the RunResult JSON; the worker refuses any other function or payload. Each job carries an explicit
time limit (`settings.job_timeout`) and `Retry(max=1)`: a job whose worker died is run once more elsewhere.
While it waits, the client reaps abandoned jobs itself (`StartedJobRegistry.cleanup()`), so a killed worker is
noticed as soon as its heartbeat lapses (`--abandon-after`, 20 s) rather than at rq's 10-minute maintenance.
Nothing hangs: a job no worker takes within `pickup_timeout` seconds, Redis going away, or a worker dying
twice each end the run with a message; queued jobs of an abandoned comparison are cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import redis
from rq import Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from backends.pool import PoolError, Stream
from backends.settings import Settings
from backends.types import Comparison, RequestError, RunRequest, RunResult, from_json, to_json

QUEUE = "vlm"
JOB_FUNC = "backends.worker.run_job"  # the only function a worker runs (backends/worker.py)
SERIALIZER = JSONSerializer
RESULT_TTL = 600  # seconds results (and failures) stay readable in Redis after a run
REAP_EVERY = 2.0  # seconds between the client's sweeps for abandoned jobs while some are running
HUNG_GRACE = 60  # a job still running this long past its time limit is given up on (its worker is hung)


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
        """Workers listening now (at least 1: the UI sizes its queue with this)."""
        try:
            return max(1, Worker.count(connection=self.conn, queue=self.queue))
        except redis.RedisError:
            return 1

    def compare(self, comparison: Comparison) -> Stream:
        reqs = comparison.requests()
        for i, r in enumerate(reqs):
            r.index = i
        try:
            jobs = [self.queue.enqueue(JOB_FUNC, to_json(r), job_timeout=self.settings.job_timeout,
                                       result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, retry=Retry(max=1),
                                       description=f"{r.method.name} (run {r.index})") for r in reqs]
        except redis.RedisError as e:
            raise self._lost(e) from None
        pending = {j.id: (j, r) for j, r in zip(jobs, reqs)}
        summary = Stream.new_summary("redis", len(reqs))
        return Stream(self._collect(pending, summary), summary, lambda: self._cancel(pending))

    def _lost(self, e: Exception) -> PoolError:
        return PoolError(f"lost the connection to Redis at {safe_url(self.url)}: {e}")

    def _collect(self, pending: dict[str, tuple[Job, RunRequest]], summary: dict) -> Iterator[RunResult]:
        """Poll the jobs' states (one round trip per poll) and yield each result as its job ends."""
        last_progress, last_reap, last_status = time.monotonic(), 0.0, {}
        limit = self.settings.job_timeout + HUNG_GRACE
        try:
            while pending:
                with self.conn.pipeline(transaction=False) as p:
                    for job, _ in pending.values():
                        p.hmget(job.key, "status", "started_at")
                    states = dict(zip(list(pending), p.execute()))
                now = time.monotonic()
                for jid, (raw_status, raw_started) in states.items():
                    job, req = pending[jid]
                    status = raw_status.decode() if raw_status else None
                    if last_status.get(jid) != status:  # taken, requeued after its worker died, or ended
                        last_status[jid], last_progress = status, now
                    if status in ("queued", "deferred", "scheduled"):
                        continue
                    if status == "started":
                        started = utcparse(raw_started.decode()) if raw_started else None
                        if started is None or (datetime.now(UTC) - started).total_seconds() < limit:
                            continue
                        result = RunResult.failed(req.method, f"{req.method.name}: no result within {limit} s of its "
                                                  "start (its worker seems hung)", req.index)
                    else:
                        result = self._finished(job, req, status, summary)
                    del pending[jid]
                    yield result
                waiting = [jid for jid in pending if last_status.get(jid) != "started"]
                if waiting and now - last_progress > self.pickup_timeout:
                    why = self._no_worker_message()
                    for jid in waiting:
                        job, req = pending.pop(jid)
                        self._cancel({jid: (job, req)})
                        yield RunResult.failed(req.method, why, req.index)
                if now - last_reap > self.reap_every and "started" in last_status.values():
                    self._reap()
                    last_reap = now
                if pending:
                    time.sleep(self.poll_s)
        except redis.RedisError as e:
            raise self._lost(e) from None
        finally:
            self._cancel(pending)

    def _finished(self, job: Job, req: RunRequest, status: str | None, summary: dict) -> RunResult:
        """The RunResult of a job that ended (finished, failed, stopped, or gone from Redis)."""
        try:
            if status is None:
                raise NoSuchJobError
            job.refresh()
        except NoSuchJobError:
            return RunResult.failed(req.method, f"{req.method.name}: the job vanished from Redis (expired or "
                                    "deleted, or Redis restarted)", req.index)
        if job.retries_left == 0:
            summary["retried"] += 1
        res = Result.fetch_latest(job, serializer=SERIALIZER)
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
        n = Worker.count(connection=self.conn, queue=self.queue)
        who = (f"no worker is listening on queue '{self.queue.name}'" if n == 0 else f"all {n} workers stayed busy")
        return (f"no worker took the job within {self.pickup_timeout:g} s ({who} at {safe_url(self.url)}; "
                f"start one with: python app.py worker --redis URL)")

    def _reap(self) -> None:
        """Requeue (Retry) or fail jobs whose worker stopped heartbeating; under rq's maintenance lock, so
        workers' own maintenance and other clients never handle the same job twice."""
        key = self.queue.registry_cleaning_key
        if self.conn.set(key, 1, nx=True, ex=30):
            try:
                StartedJobRegistry(queue=self.queue).cleanup()
            finally:
                self.conn.delete(key)

    def _cancel(self, pending: dict[str, tuple[Job, RunRequest]]) -> None:
        """Best effort: cancel jobs no worker has started (the caller stopped waiting for them)."""
        for job, _ in list(pending.values()):
            try:
                if job.get_status(refresh=True) == "queued":
                    job.cancel()
            except Exception:  # Redis gone or the job just started/ended: nothing left to cancel
                pass

    def catalog(self) -> list[dict]:
        from methods import registry

        return registry.catalog()

    def close(self) -> None:
        self.conn.close()
