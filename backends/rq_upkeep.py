"""Keeping rq's records true after crashes: live workers, abandoned and stranded jobs, stale registrations.

    live_workers(queue)          the workers that heartbeat recently (a SIGKILLed worker's record lingers 90 s)
    sweep(queue)                 requeue abandoned jobs (rq's own cleanup, Retry) and stranded ones, under rq's lock
    report(queue, clean=True)    what `python app.py worker --cleanup` prints (and fixes)

Stranded: rq 3.0 moves a job from its queue to an "intermediate" list (BLMOVE) before the worker registers it as
started with a heartbeat lease. A worker killed in between leaves the job there with no lease, and rq fails or
retries it only when its maintenance has seen it there for over a minute (about 90 s in practice). Here it goes
back to the front of its queue `STRANDED_S` seconds after a sweep first saw it there without a lease; it never
started, so it keeps its retry. The clients' 2 s sweeps and the idle workers' 15 s maintenance both run this.
"""

from __future__ import annotations

import os
import socket

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry, clean_registries
from rq.utils import now
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

LIVE_S = 30  # idle workers heartbeat every 15 s, busy ones every abandon_after / 4: older means dead
STRANDED_S = 10  # a job taken from the queue is registered as started within milliseconds by a live worker
SWEEP_LOCK_S = 30
RQ_LOCK_S = 899  # rq's own maintenance lock (Queue.acquire_maintenance_lock), deleted by its holder when done
STALE_LOCK_S = 60  # a maintenance holder alive finishes within seconds: older, it was killed while holding it


def live_workers(queue: Queue) -> list[Worker]:
    """Registered workers of `queue` whose last heartbeat is under `LIVE_S` seconds old and, for workers on this
    host, whose process still exists (a SIGKILLed local worker is known dead at once)."""
    out, host = [], socket.gethostname()
    for w in Worker.all(queue=queue, serializer=queue.serializer):
        if w.death_date is None and w.last_heartbeat is not None \
                and (now() - w.last_heartbeat).total_seconds() < LIVE_S \
                and not (w.hostname == host and w.pid and not _pid_exists(w.pid)):
            out.append(w)
    return out


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def stale_registrations(queue: Queue) -> list[str]:
    """Worker keys still listed for `queue` that belong to no live worker (killed, or expired after a crash)."""
    live = {w.key for w in live_workers(queue)}
    keys = queue.connection.smembers(WORKERS_BY_QUEUE_KEY % queue.name)
    return sorted(k.decode() for k in keys if k.decode() not in live)


def requeue_stranded(queue: Queue, stranded_s: float = STRANDED_S, force: bool = False) -> list[str]:
    """Put jobs a dead worker took but never started back at the front of the queue; returns their ids.
    `force`: every taken job not leased (for an operator when no worker is alive to be starting one)."""
    iq, conn, out = queue.intermediate_queue, queue.connection, []
    started = StartedJobRegistry(queue=queue)
    for jid in iq.get_job_ids():
        if jid in started:
            continue
        if not force:
            if iq.set_first_seen(jid):  # first seen now (the key is shared by every sweeper)
                continue
            first = iq.get_first_seen(jid)
            if first is None or (now() - first).total_seconds() < stranded_s:
                continue
        key = Job.key_for(jid)
        with conn.pipeline() as p:
            try:
                p.watch(key)  # a live worker starting it meanwhile aborts the move
                status = p.hget(key, "status")
                p.multi()
                p.lrem(iq.key, 1, jid)
                p.delete(iq.get_first_seen_key(jid))
                if status == b"queued":
                    queue.push_job_id(jid, pipeline=p, at_front=True)
                p.execute()
            except redis.WatchError:
                continue
        if status == b"queued":
            out.append(jid)
    return out


def sweep(queue: Queue) -> list[str]:
    """Requeue (Retry) or fail abandoned jobs and requeue stranded ones, once across all sweepers at a time.
    Returns the stranded jobs requeued."""
    conn = queue.connection
    if not _lock(queue):
        return []
    try:
        StartedJobRegistry(queue=queue).cleanup()
        return requeue_stranded(queue)
    finally:
        conn.delete(queue.registry_cleaning_key)


def _lock(queue: Queue) -> bool:
    """rq's maintenance lock for a sweep of `SWEEP_LOCK_S` s at most. A worker SIGKILLed during rq's maintenance
    leaves that lock for 15 minutes, stopping every sweep meanwhile (abandoned and stranded jobs then wait and
    runs fail as "no worker took the job"; seen with a kill every 20 s): one older than a minute is broken."""
    conn, key = queue.connection, queue.registry_cleaning_key
    if conn.set(key, 1, nx=True, ex=SWEEP_LOCK_S):
        return True
    ttl = conn.ttl(key)
    if ttl > SWEEP_LOCK_S and RQ_LOCK_S - ttl > STALE_LOCK_S:
        conn.delete(key)  # another sweeper may break it at the same moment: SET NX decides between them
        return bool(conn.set(key, 1, nx=True, ex=SWEEP_LOCK_S))
    return False


def report(queue: Queue, clean: bool = True) -> list[str]:
    """The queue's true state, one line per fact; with `clean`, stale registrations are removed, abandoned and
    stranded jobs requeued and expired registry entries dropped first (so `rq info` shows the same)."""
    conn = queue.connection
    stale = stale_registrations(queue)
    requeued: list[str] = []
    if clean:
        with conn.pipeline() as p:
            for key in stale:
                p.srem(WORKERS_BY_QUEUE_KEY % queue.name, key)
                p.srem(REDIS_WORKER_KEYS, key)
                p.delete(key)
            p.execute()
        clean_registries(queue)
        requeued = requeue_stranded(queue, force=not live_workers(queue))
    live = live_workers(queue)
    failed = FailedJobRegistry(queue=queue)
    return [
        f"queue {queue.name!r}: {queue.count} queued, {StartedJobRegistry(queue=queue).count} running, "
        f"{len(queue.intermediate_queue.get_job_ids())} taken but not started, {failed.count} failed "
        "(kept for their failure_ttl)",
        f"workers: {len(live)} live ({', '.join(sorted(w.name for w in live)) or 'none'}); {len(stale)} stale "
        f"registration(s) {'removed' if clean else 'found'}" + (f": {', '.join(stale)}" if stale else ""),
        f"stranded jobs requeued: {len(requeued)}" + (f" ({', '.join(requeued)})" if requeued else ""),
    ]

