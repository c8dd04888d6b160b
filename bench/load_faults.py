"""Load and faults through the API, as an operator would test it; prints one line of figures.

    python bench/load_faults.py --clients 16 --comparisons 1500 --kill-every 20 --redis-down 3   (the issue's scale)
    python bench/load_faults.py --quick                                (the suite's run: tests/test_reliability_load.py)

Starts a redis-server (no persistence), `--workers` `python app.py worker` processes and `python app.py` on it
(the built-in model, or `--model`), measures undisturbed reference answers for every input, then runs `--clients`
concurrent gradio_client users for `--comparisons` comparisons in all while a chaos thread SIGKILLs a random serving
worker (possibly mid-job; a replacement starts at once) every `--kill-every` s and restarts Redis once (down
`--redis-down` s) half-way. Then it sends the hostile inputs of `bench/hostile.py` and checks the aftermath
(workers alive and registered, no job stranded). Everything it started is stopped at the end, and the whole run
is bounded by `--time-limit`.

Figures: finished (comparisons whose every run came back ok), lost (a comparison that came back without all its
runs, or failed), hung (no answer within `--hang-s`), wrong (a run whose tokens differ from the reference),
bad inputs answered with a clear message, p50/p95 latency of a comparison, peak resident memory of the app and
of the largest worker (the kernel's high-water mark, VmHWM), kills, restarts, stranded jobs, workers alive.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostile import hostile_inputs  # noqa: E402
from tests.conftest import free_port  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples"
METHODS = ["random"]  # with the baseline: two runs per comparison; random's seed makes its answer reproducible


def hwm_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Rig:
    """Redis, workers and the app as processes; every one is stopped by `stop()`."""

    def __init__(self, args, logs: Path):
        self.args, self.logs, self.workers, self.peak = args, logs, [], {"app": 0.0, "worker": 0.0}
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", VLM_THREADS="1", HF_HUB_OFFLINE="1",
                        OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
        self.redis = self.app = None
        self.lock = threading.Lock()

    def start_redis(self) -> None:
        self.redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis

        for _ in range(200):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def start_worker(self) -> subprocess.Popen:
        log = open(self.logs / f"worker-{len(self.workers)}.log", "w")
        p = subprocess.Popen([sys.executable, "app.py", "worker", "--redis", self.url, "--model", self.args.model,
                              "--abandon-after", "5"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        with self.lock:
            self.workers.append(p)
        return p

    def start_app(self) -> str:
        port = free_port()
        env = dict(self.env, VLM_MODEL=self.args.model, GRADIO_SERVER_PORT=str(port),
                   VLM_MAX_QUEUE=str(max(32, 2 * self.args.clients)), VLM_JOB_TIMEOUT="120")
        if not self.args.inprocess:
            env["REDIS_URL"] = self.url
        self.app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                                    stdout=open(self.logs / "app.log", "w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    return url
            except OSError:
                time.sleep(0.2)
            if self.app.poll() is not None:
                break
        raise RuntimeError("the app did not come up: " + (self.logs / "app.log").read_text()[-2000:])

    def alive_workers(self) -> list[subprocess.Popen]:
        with self.lock:
            return [p for p in self.workers if p.poll() is None]

    def sample_memory(self) -> None:
        if self.app is not None:
            self.peak["app"] = max(self.peak["app"], hwm_mb(self.app.pid))
        for p in self.alive_workers():
            self.peak["worker"] = max(self.peak["worker"], hwm_mb(p.pid))

    def kill_one_worker(self) -> bool:
        """SIGKILL a random serving worker (registered, so possibly mid-job) and start a replacement. Workers still
        loading are spared: on a loaded 2-core box a replacement needs longer than a kill interval to start."""
        import redis
        from rq import Queue

        from backends import rq_upkeep

        try:
            serving = {w.pid for w in rq_upkeep.live_workers(Queue("vlm", connection=redis.Redis.from_url(self.url)))}
        except redis.RedisError:  # Redis is being restarted: try again next round
            return False
        victims = [p for p in self.alive_workers() if p.pid in serving]
        if not victims:
            return False
        victim = random.choice(victims)
        self.sample_memory()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.start_worker()
        return True

    def restart_redis(self, down_s: float) -> None:
        self.redis.terminate()
        self.redis.wait()
        time.sleep(down_s)
        self.start_redis()

    def stop(self) -> None:
        for p in [self.app, *self.workers]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [self.app, *self.workers]:
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait()


def inputs() -> list[tuple[str, str]]:
    listing = json.loads((EXAMPLES / "examples.json").read_text())["images"]
    return [(str(EXAMPLES / e["file"]), e["prompt"]) for e in listing]


def compare(client, image: str, prompt: str, hang_s: float):
    from gradio_client import handle_file

    job = client.submit(image=handle_file(image), prompt=prompt, methods=METHODS, keep=0.5, max_new_tokens=4,
                        warmup=0, repeats=1, api_name="/compare")
    return job.result(timeout=hang_s)[4]


def load(args, url: str, rig: Rig) -> dict:
    from gradio_client import Client

    pairs = inputs()
    ref_client = Client(url, verbose=False)
    reference = {}
    for image, prompt in pairs:  # undisturbed answers, before any fault
        doc = compare(ref_client, image, prompt, args.hang_s)
        reference[image] = [r["output_ids"] for r in doc["runs"]]
    tally = {"finished": 0, "lost": 0, "hung": 0, "wrong": 0, "errors": []}
    latencies: list[float] = []
    todo = list(range(args.comparisons))
    lock = threading.Lock()

    def client_loop():
        client = Client(url, verbose=False)
        while True:
            with lock:
                if not todo:
                    return
                k = todo.pop()
            image, prompt = pairs[k % len(pairs)]
            t0 = time.perf_counter()
            try:
                doc = compare(client, image, prompt, args.hang_s)
            except TimeoutError:
                with lock:
                    tally["hung"] += 1
                continue
            except Exception as e:  # noqa: BLE001 - counted, and its message kept
                with lock:
                    tally["lost"] += 1
                    tally["errors"].append(str(e)[:200])
                continue
            runs = doc["runs"]
            with lock:
                latencies.append(time.perf_counter() - t0)
                if len(runs) != 1 + len(METHODS) or not all(r["ok"] for r in runs):
                    tally["lost"] += 1
                    tally["errors"] += [r["error"] for r in runs if not r["ok"]][:1]
                else:
                    tally["finished"] += 1
                    tally["wrong"] += sum(r["output_ids"] != ref for r, ref in zip(runs, reference[image]))

    stop = threading.Event()
    chaos = {"kills": 0, "restarts": 0}

    def chaos_loop():
        t0, restarted = time.monotonic(), False
        while not stop.wait(0.5):
            rig.sample_memory()
            if args.inprocess:
                continue
            with lock:
                done_share = 1 - len(todo) / max(1, args.comparisons)
            if not restarted and args.redis_down > 0 and done_share >= 0.5:
                rig.restart_redis(args.redis_down)
                chaos["restarts"] += 1
                restarted = True
            due = time.monotonic() - t0 >= args.kill_every * (chaos["kills"] + 1)
            more = args.max_kills is None or chaos["kills"] < args.max_kills
            if args.kill_every > 0 and more and (due or (chaos["kills"] == 0 and done_share >= 0.25)):  # >= 1
                chaos["kills"] += rig.kill_one_worker()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.clients)]
    chaos_thread = threading.Thread(target=chaos_loop, daemon=True)
    chaos_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    chaos_thread.join()
    tally.update(chaos)
    q = sorted(latencies) or [0.0]
    tally["p50"], tally["p95"] = statistics.median(q), q[min(len(q) - 1, int(0.95 * len(q)))]
    return tally


def aftermath(rig: Rig, timeout: float = 60) -> dict:
    """Workers alive and registered, nothing stranded, and the operator's report."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from backends import rq_upkeep

    conn = redis.Redis.from_url(rig.url)
    q = Queue("vlm", connection=conn, serializer=JSONSerializer)
    deadline = time.monotonic() + timeout
    while len(rq_upkeep.live_workers(q)) < len(rig.alive_workers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    # runs of clients that gave up (hung) may still be queued or running: let the queue drain, then what is left
    # taken-but-never-started (rq's intermediate list) is stranded
    while (q.count or q.started_job_registry.count) and time.monotonic() < deadline + timeout:
        time.sleep(0.5)
    out = subprocess.run([sys.executable, "app.py", "worker", "--cleanup", "--redis", rig.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=rig.env)
    return {"alive": len(rig.alive_workers()), "registered": len(rq_upkeep.live_workers(q)),
            "stranded": len(q.intermediate_queue.get_job_ids()),
            "report": out.stdout.strip().splitlines()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--comparisons", type=int, default=60, help="in all, shared by the clients")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between worker SIGKILLs (0: none)")
    p.add_argument("--max-kills", type=int, default=None, help="stop killing after this many (default: no limit)")
    p.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis is down half-way (0: no restart)")
    p.add_argument("--hang-s", type=float, default=180.0, help="a comparison not answered within this hangs")
    p.add_argument("--time-limit", type=float, default=1800.0, help="the whole run is killed after this")
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-llava-shapes"))
    p.add_argument("--inprocess", action="store_true", help="the in-process pool: no Redis, no kills")
    p.add_argument("--no-hostile", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 clients x 6 comparisons, one kill (a quarter in), one "
                   "Redis restart (half-way): one of each fault, whatever the machine's speed")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.clients, args.comparisons, args.kill_every, args.max_kills, args.time_limit = 2, 6, 8.0, 1, 600.0
    timer = threading.Timer(args.time_limit, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    logs = Path(tempfile.mkdtemp(prefix="load-faults-"))
    rig = Rig(args, logs)
    signal.signal(signal.SIGTERM, lambda *_: (rig.stop(), os._exit(3)))
    try:
        if not args.inprocess:
            rig.start_redis()
            for _ in range(args.workers):
                rig.start_worker()
        url = rig.start_app()
        t0 = time.monotonic()
        figures = load(args, url, rig)
        figures["wall_s"] = time.monotonic() - t0
        hostile = {"answered": 0, "total": 0, "slowest_s": 0.0, "slowest": "-", "bombs_s": 0.0, "app_growth_mb": 0.0,
                   "unclear": []}
        if not args.no_hostile:
            from gradio_client import Client

            scratch = Path(tempfile.gettempdir()) / "vlm-load-faults-hostile"  # the same files each run: made once
            before = hwm_mb(rig.app.pid)
            hostile = hostile_inputs(Client(url, verbose=False), url, scratch)
            hostile["app_growth_mb"] = hwm_mb(rig.app.pid) - before  # peak RSS growth over the hostile inputs
        rig.sample_memory()
        after = aftermath(rig) if not args.inprocess else {"alive": 0, "registered": 0, "stranded": 0, "report": []}
        rig.sample_memory()
        served = compare(__import__("gradio_client").Client(url, verbose=False), *inputs()[0], args.hang_s)
        figures.update(hostile=hostile, after=after, still_serving=all(r["ok"] for r in served["runs"]),
                       peak=rig.peak, scale=f"{args.clients} clients x {args.comparisons} comparisons")
    finally:
        rig.stop()
    f, h, a = figures, figures["hostile"], figures["after"]
    print(f"load-faults ({f['scale']}, {'in-process' if args.inprocess else f'{args.workers} Redis workers'}): "
          f"finished {f['finished']}/{args.comparisons}, lost {f['lost']}, hung {f['hung']}, wrong {f['wrong']}, "
          f"bad inputs answered {h['answered']}/{h['total']} (bombs refused in {h['bombs_s']:.2f} s at most, app peak "
          f"+{h['app_growth_mb']:.0f} MB; slowest {h['slowest_s']:.2f} s: {h['slowest']}), "
          f"p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s, peak RSS app {f['peak']['app']:.0f} MB / worker "
          f"{f['peak']['worker']:.0f} MB, kills {f['kills']}, Redis restarts {f['restarts']}, stranded "
          f"{a['stranded']}, workers alive {a['alive']} registered {a['registered']}, still serving "
          f"{'yes' if f['still_serving'] else 'NO'}, {f['wall_s']:.0f} s")
    if args.json:
        print(json.dumps({k: v for k, v in figures.items()}, default=str))
    if f["errors"] or h["unclear"]:
        print("errors:", f["errors"][:5], "unclear:", h["unclear"][:5], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
