"""Redis faults ridden out (issue 15), on a real redis-server restarted on the same port (no persistence: a
restart loses every job) and real `python app.py worker` processes.

- a Redis restart while runs are queued and running fails no run, and both busy workers survive it and register
  again; idle workers do the same after an idle restart;
- a job taken by a worker that dies before starting it is requeued by the client's sweep within 10 s of being
  first seen taken, keeping its retry; "no worker took the job" counts live workers only;
- the operator's `python app.py worker --cleanup` removes the dead worker's record, so rq shows the truth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from rq import Worker

from backends import rq_upkeep
from backends.redis_pool import RedisPool
from backends.settings import Settings
from backends.types import MethodSpec, RunResult
from tests.conftest import RedisServer
from tests.test_pool_redis import ROOT, Workers, comparison, started_jobs


@pytest.fixture(scope="module")
def rig(random_model_dir, tmp_path_factory):
    server = RedisServer()
    workers = Workers(server.url, random_model_dir, tmp_path_factory.mktemp("workers"))
    workers.start(2)
    yield server, workers
    workers.stop()
    server.stop()


def collect(stream) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    t = threading.Thread(target=lambda: results.extend(stream), daemon=True)
    t.start()
    return t, results


def test_redis_restart_mid_comparison_fails_no_run_and_kills_no_worker(rig, random_model_dir, scene_png):
    server, workers = rig
    comp = comparison(scene_png, random_model_dir, [MethodSpec("baseline")] * 4)
    pool = RedisPool(Settings(), server.url, reap_every=0.5)
    (reference,) = RedisPool(Settings(), server.url).compare(comparison(scene_png, random_model_dir,
                                                                         [MethodSpec("baseline")]))
    stream = pool.compare(comp)
    t, results = collect(stream)
    started_jobs(workers, 2)  # both workers busy, two runs queued: Redis loses all four jobs
    server.restart(down_s=2.0)
    t.join(180)  # generous: the machine may be busy; a hang is what is checked
    assert not t.is_alive(), "the comparison hung after the restart"
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.output_ids == reference.output_ids for r in results)  # the same answers as undisturbed
    assert stream.summary["complete"] is True and stream.summary["resubmitted"] >= 2
    assert len(workers.alive()) == 2  # neither busy worker exited
    workers.wait(2, timeout=60)  # and both are registered again in the new Redis


def test_idle_workers_register_again_after_an_idle_restart(rig, random_model_dir, scene_png):
    server, workers = rig
    workers.wait(2)
    server.restart(down_s=1.0)
    workers.wait(2, timeout=60)
    assert len(rq_upkeep.live_workers(workers.queue)) == 2
    (r,) = RedisPool(Settings(), server.url).compare(comparison(scene_png, random_model_dir,
                                                                [MethodSpec("baseline")]))
    assert r.ok and r.worker in workers.names()


def test_job_of_a_worker_dead_before_starting_it_is_requeued(rig, random_model_dir, scene_png, tmp_path):
    server, _ = rig
    stall = Workers(server.url, random_model_dir, tmp_path, queue="stall")
    try:
        stall.start(1, extra=("--test-stall", "60"))  # takes a job, then waits a minute before starting it
        (victim,) = stall.alive()
        pool = RedisPool(Settings(), server.url, queue="stall", reap_every=0.5)
        stream = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")]))
        t, results = collect(stream)
        iq = stall.queue.intermediate_queue
        deadline = time.monotonic() + 20
        while not iq.get_job_ids():
            assert time.monotonic() < deadline, "the worker did not take the job"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        t_kill = time.monotonic()
        # its record lingers (rq keeps it 90 s), but it is not a live worker
        assert Worker.count(queue=stall.queue) == 1 and rq_upkeep.live_workers(stall.queue) == []
        assert "(no live worker is listening on queue 'stall'" in pool._no_worker_message()
        # the client's sweeps put the stranded job back in the queue 10 s after first seeing it taken
        while iq.get_job_ids():
            assert time.monotonic() - t_kill < 15, "the stranded job was not requeued"
            time.sleep(0.1)
        assert stall.queue.count == 1
        stall.start(1)  # a healthy worker (its start-up time on a busy machine is not part of the bound)
        t.join(120)
        assert not t.is_alive() and len(results) == 1 and results[0].ok, [r.error for r in results]
        assert results[0].worker in stall.names()
        assert stream.summary["retried"] == 0  # requeued untouched: it never started, so it kept its retry
        out = subprocess.run([sys.executable, "app.py", "worker", "--cleanup", "--redis", server.url, "--queue",
                              "stall"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "queue 'stall': 0 queued, 0 running, 0 taken but not started, 0 failed (kept for " \
                           "their failure_ttl)"
        assert lines[1].startswith("workers: 1 live (") and "1 stale registration(s) removed: rq:worker:" in lines[1]
        assert Worker.count(queue=stall.queue) == 1  # what `rq info` counts is now the truth
    finally:
        stall.stop()


def test_a_maintenance_lock_left_by_a_killed_worker_is_broken(redis_server):
    """rq's maintenance lock lives 15 minutes unless its holder deletes it; a worker killed while holding it must
    not stop the sweeps (abandoned and stranded jobs would wait, and their runs fail)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from backends.redis_pool import JOB_FUNC

    conn = redis.Redis.from_url(redis_server.url)
    q = Queue("locked", connection=conn, serializer=JSONSerializer)
    job = q.enqueue(JOB_FUNC, "{}")
    conn.lrem(q.key, 1, job.id)  # taken by a worker (BLMOVE) that died before starting it
    conn.rpush(q.intermediate_queue.key, job.id)
    conn.set(q.intermediate_queue.get_first_seen_key(job.id), time.time() - 20)  # seen taken 20 s ago
    conn.set(q.registry_cleaning_key, 1, ex=rq_upkeep.RQ_LOCK_S - 30)  # rq's maintenance, 30 s in: maybe alive
    assert rq_upkeep.sweep(q) == [] and q.intermediate_queue.get_job_ids() == [job.id]
    conn.set(q.registry_cleaning_key, 1, ex=rq_upkeep.RQ_LOCK_S - 61)  # 61 s in: its holder was killed
    assert rq_upkeep.sweep(q) == [job.id]
    assert q.job_ids == [job.id] and q.intermediate_queue.get_job_ids() == []
    assert conn.exists(q.registry_cleaning_key) == 0  # released after the sweep
