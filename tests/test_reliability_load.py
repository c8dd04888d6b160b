"""The load-and-fault script's quick mode (bench/load_faults.py --quick): 2 concurrent API clients x 6 comparisons
through Redis and 2 workers, one worker SIGKILLed and Redis restarted mid-run, then 55 hostile inputs. Nothing may
be lost, hang or differ from the undisturbed answers; every hostile input gets a clear message; the memory and
time bombs are refused in under 2 s with under 200 MB of growth; afterwards the workers are alive and registered
and no job is stranded. About a minute on a shared 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_serve import ROOT


def test_quick_load_and_faults():
    p = subprocess.run([sys.executable, "bench/load_faults.py", "--quick", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line, doc = p.stdout.strip().splitlines()[-2:]
    assert line.startswith("load-faults (2 clients x 6 comparisons, 2 Redis workers): finished 6/6, lost 0, hung 0, "
                           "wrong 0, bad inputs answered 55/55"), line
    f = json.loads(doc)
    h, after = f["hostile"], f["after"]
    assert (f["finished"], f["lost"], f["hung"], f["wrong"]) == (6, 0, 0, 0), f["errors"]
    assert h["answered"] == h["total"] == 55, h["unclear"]
    assert h["bombs_s"] < 2.0 and h["app_growth_mb"] < 200
    assert f["kills"] == 1 and f["restarts"] == 1
    assert (after["stranded"], after["alive"], after["registered"]) == (0, 2, 2)
    assert after["report"][1].startswith("workers: 2 live (") and f["still_serving"] is True
