"""RedisPool against a real redis-server and real `python app.py worker` processes (rq 3.0, JSON on the wire).

Workers run with `--test-sleep 1.5` (each job sleeps 1.5 s before its run, so a worker can be killed mid-job)
and `--abandon-after 2` (a dead worker's job is noticed within ~2 s). Tests that kill workers come last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app import main
from backends import media
from backends.pool import LocalPool, PoolError
from backends.redis_pool import JOB_FUNC, QUEUE, RedisPool, safe_url
from backends.settings import Settings
from backends.types import Comparison, GenerationSettings, MethodSpec, RunResult, from_json
from tests.conftest import RedisServer, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLEEP = 1.5


class Workers:
    def __init__(self, url: str, model_dir: str, logs, queue: str = QUEUE):
        self.url, self.model_dir, self.logs, self.procs = url, model_dir, logs, []
        self.conn = redis.Redis.from_url(url)
        self.queue = Queue(queue, connection=self.conn, serializer=JSONSerializer)

    def start(self, n: int, wait: bool = True, extra: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", VLM_THREADS="1", HF_HUB_OFFLINE="1")
        env.pop("REDIS_URL", None)
        for _ in range(n):
            log = open(self.logs / f"worker-{len(self.procs)}.log", "w")
            self.procs.append(subprocess.Popen(
                [sys.executable, "app.py", "worker", "--redis", self.url, "--model", self.model_dir,
                 "--queue", self.queue.name, "--abandon-after", "2", "--test-sleep", str(SLEEP), *extra],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        if wait:
            self.wait(len(self.alive()))

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.names()) < n:
            assert len(self.alive()) >= n, "a worker exited:\n" + "\n".join(
                (self.logs / f"worker-{i}.log").read_text()[-2000:] for i in range(len(self.procs)))
            assert time.monotonic() < deadline, f"{n} workers did not register within {timeout} s"
            time.sleep(0.1)

    def names(self) -> dict[str, int]:
        """Live workers on the queue: rq name -> pid."""
        pids = {p.pid for p in self.alive()}
        return {w.name: w.pid for w in Worker.all(connection=self.conn, queue=self.queue) if w.pid in pids}

    def stop(self) -> None:
        for p in self.alive():
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def workers(redis_server, random_model_dir, tmp_path_factory):
    w = Workers(redis_server.url, random_model_dir, tmp_path_factory.mktemp("workers"))
    w.start(2)
    yield w
    w.stop()


def comparison(image: str, model: str, specs: list[MethodSpec]) -> Comparison:
    return Comparison(media.image_media(image, Settings()), "how many shapes are there?", specs,
                      GenerationSettings(max_new_tokens=4, warmup=0), model)


def four_specs() -> list[MethodSpec]:
    """The first four registered methods, padded with the baseline while fewer exist."""
    from methods import registry

    names = registry.names()[:4]
    return [MethodSpec(n) for n in names] + [MethodSpec("baseline")] * (4 - len(names))


def started_jobs(w: Workers, n: int, exclude: set[str] = frozenset(), timeout: float = 30) -> list[Job]:
    """Wait until `n` jobs are running on workers not in `exclude`; returns them."""
    reg = StartedJobRegistry(queue=w.queue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in Job.fetch_many(reg.get_job_ids(), connection=w.conn, serializer=JSONSerializer) if j]
        jobs = [j for j in jobs if j.get_status() == "started" and j.worker_name and j.worker_name not in exclude]
        if len(jobs) >= n:
            return jobs
        time.sleep(0.02)
    raise AssertionError(f"{n} jobs did not start within {timeout} s")


def test_four_runs_on_two_workers_match_local_pool(workers, random_model_dir, scene_png):
    comp = comparison(scene_png, random_model_dir, four_specs())
    pool = RedisPool(Settings(), workers.url)
    assert pool.workers == 2
    stream = pool.compare(comp)
    remote = sorted(stream, key=lambda r: r.index)
    local_pool = LocalPool(Settings(), devices=["cpu"])
    local = sorted(local_pool.compare(comp), key=lambda r: r.index)
    local_pool.close()
    assert [r.index for r in remote] == [0, 1, 2, 3] and all(r.ok for r in remote + local)
    for r, lo in zip(remote, local, strict=True):
        assert (r.method, r.params, r.answer, r.output_ids) == (lo.method, lo.params, lo.answer, lo.output_ids)
        assert r.visual_tokens == lo.visual_tokens and r.memory.kv_cache_bytes == lo.memory.kv_cache_bytes
    assert {r.worker for r in remote} == set(workers.names())  # both workers took jobs
    s = stream.summary
    assert (s["pool"], s["runs"], s["ok"], s["failed"], s["retried"], s["complete"]) == ("redis", 4, 4, 0, 0, True)
    assert sorted(s["order"]) == [0, 1, 2, 3] and sum(s["workers"].values()) == 4 and len(s["workers"]) == 2


def test_failing_run_comes_back_and_workers_refuse_other_payloads(workers, random_model_dir, scene_png):
    pool = RedisPool(Settings(), workers.url)
    results = sorted(pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline"),
                                                                           MethodSpec("nosuch")])),
                     key=lambda r: r.index)
    assert results[0].ok and not results[1].ok
    assert results[1].error.startswith("unknown method 'nosuch'; known: baseline")
    q = workers.queue
    payload = '{"evil": 1}'
    bad = q.enqueue(JOB_FUNC, payload, result_ttl=60)
    other = q.enqueue("os.getpid", result_ttl=60, failure_ttl=60)
    assert json.loads(zlib.decompress(workers.conn.hget(bad.key, "data"))) == [JOB_FUNC, None, [payload], {}]
    deadline = time.monotonic() + 20
    while {bad.get_status(), other.get_status()} - {"finished", "failed"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (bad.get_status(), other.get_status()) == ("finished", "failed")
    refused = from_json(RunResult, bad.latest_result().return_value)
    assert (refused.ok, refused.error) == (False, "refused: the payload is not a valid RunRequest "
                                                  "(RunRequest: unknown fields ['evil'])")
    assert other.latest_result().exc_string.strip().splitlines()[-1] == (
        "backends.worker.RefusedJob: refused: this worker only runs backends.worker.run_job(<RunRequest JSON>), "
        "not 'os.getpid'")


def test_run_over_its_time_limit(workers, random_model_dir, scene_png):
    pool = RedisPool(Settings(job_timeout=1), workers.url)  # the workers' 1.5 s sleep exceeds it
    t0 = time.monotonic()
    (r,) = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")]))
    assert (r.ok, r.error) == (False, "baseline exceeded its 1 s time limit")
    assert r.worker in workers.names() and time.monotonic() - t0 < 5


def test_no_worker_fails_within_the_pickup_timeout(redis_server, random_model_dir, scene_png):
    pool = RedisPool(Settings(), redis_server.url, queue="nobody", pickup_timeout=1.5)
    t0 = time.monotonic()
    stream = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")] * 2))
    results = list(stream)
    assert 1.5 < time.monotonic() - t0 < 4
    why = (f"no worker took the job within 1.5 s (no live worker is listening on queue 'nobody' at "
           f"{redis_server.url}; start one with: python app.py worker --redis URL)")
    assert [(r.index, r.ok, r.error) for r in results] == [(0, False, why), (1, False, why)]
    assert Queue("nobody", connection=pool.conn).count == 0  # nothing left queued for a later worker


def test_redis_down_past_the_outage_bound_fails_naming_the_url(random_model_dir, scene_png, capsys):
    server = RedisServer()
    pool = RedisPool(Settings(redis_outage_s=1.5), server.url, queue="nobody", pickup_timeout=30)
    stream = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")]))
    threading.Timer(0.5, server.stop).start()  # mid-run: the job is queued and the client is polling
    t0 = time.monotonic()
    with pytest.raises(PoolError, match=f"^lost the connection to Redis at {re.escape(server.url)}: "):
        list(stream)
    assert 0.5 + 1.5 < time.monotonic() - t0 < 6  # rode the outage out for its bound, then gave up
    with pytest.raises(PoolError) as e:  # at start
        RedisPool(Settings(), server.url)
    assert str(e.value).startswith(f"cannot reach Redis at {server.url}: Error 111 connecting to")
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    assert main(["compare", "--image", scene_png, "--prompt", "q", "--redis", dead]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach Redis at {safe_url(dead)}: ") and "s3cret" not in err
    assert safe_url(dead) == dead.replace("s3cret", "***")


def test_cli_runs_through_the_workers(workers, random_model_dir, scene_png, monkeypatch, capsys):
    args = ["compare", "--image", scene_png, "--prompt", "how many shapes are there?", "--model", random_model_dir,
            "--max-new-tokens", "4", "--warmup", "0", "--json"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("REDIS_URL", None)
    p = subprocess.run([sys.executable, "app.py", *args, "--redis", workers.url], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (run,) = json.loads(p.stdout)["runs"]
    assert run["ok"] and run["worker"] in workers.names()
    monkeypatch.setenv("REDIS_URL", workers.url)  # the same through the environment (in-process)
    assert main(args) == 0
    (again,) = json.loads(capsys.readouterr().out)["runs"]
    assert again["worker"] in workers.names() and again["output_ids"] == run["output_ids"]


def test_killed_worker_job_is_retried_on_the_other(workers, random_model_dir, scene_png):
    workers.start(1, wait=False)  # a spare for the next test, loading meanwhile (it may take the retry here)
    pool = RedisPool(Settings(), workers.url, reap_every=0.5)
    stream = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")] * 2))
    results: list[RunResult] = []
    t = threading.Thread(target=lambda: results.extend(stream))
    t.start()
    jobs = started_jobs(workers, 2)
    victim, other = sorted(jobs, key=lambda j: j.description)  # "baseline (run 0)", "baseline (run 1)"
    os.kill(workers.names()[victim.worker_name], signal.SIGKILL)  # mid-job: it sleeps 1.5 s before running
    t.join(30)
    assert not t.is_alive() and len(results) == 2
    by_index = sorted(results, key=lambda r: r.index)
    assert [r.ok for r in by_index] == [True, True] and by_index[1].worker == other.worker_name
    assert by_index[0].worker in workers.names() and by_index[0].worker != victim.worker_name  # retried elsewhere
    assert by_index[0].output_ids == by_index[1].output_ids
    assert stream.summary["retried"] == 1 and stream.summary["complete"] is True
    victim.refresh()
    assert victim.retries_left == 0 and victim.get_status() == "finished"


def test_run_fails_when_its_retry_dies_too(workers, random_model_dir, scene_png):
    workers.wait(2)  # the survivor and the spare
    pool = RedisPool(Settings(), workers.url, reap_every=0.5)
    stream = pool.compare(comparison(scene_png, random_model_dir, [MethodSpec("baseline")]))
    results: list[RunResult] = []
    t = threading.Thread(target=lambda: results.extend(stream))
    t.start()
    t0 = time.monotonic()
    names = workers.names()
    (first,) = started_jobs(workers, 1)
    os.kill(names[first.worker_name], signal.SIGKILL)
    (retry,) = started_jobs(workers, 1, exclude={first.worker_name})
    os.kill(names[retry.worker_name], signal.SIGKILL)
    t.join(30)
    assert not t.is_alive() and time.monotonic() - t0 < 15
    assert [(r.ok, r.error) for r in results] == [
        (False, "baseline: its worker died mid-run, and so did the retry on another worker")]
    assert stream.summary["retried"] == 1 and stream.summary["failed"] == 1
