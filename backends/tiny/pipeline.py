"""`python app.py train-tiny`: the shipped built-in model from one command, stage by stage.

    python app.py train-tiny [--out assets/tiny-llava-shapes] [--init V1_DIR | --stage2 DIR] [--resume]

Stage 1 is v1 from scratch (`train.py`); the later stages are `train_v2.py` runs, each continuing the previous
stage's model with the options below. Every stage writes its own folder and its record (`training_v*.json`), so a
stopped pipeline resumes stage by stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .train_v2 import main

# Stage 3: the same trainer, continued from stage 2's model with direction questions at 60% of the video questions
# and the start/end cell aux on (stage 2 left direction at its constant-answer rate; this taught it).
STAGE3 = ["--steps", "1200", "--clips", "6", "--lr", "5e-4", "--warmup", "50", "--dir-weight", "0.6",
          "--w-cell", "0.5", "--eval-every", "200", "--record", "training_v3.json"]


def pipeline(argv: list[str] | None = None) -> int:
    """`python app.py train-tiny`: the shipped model from one command. Without --init, stage 1 (v1 from scratch,
    `train.py`'s recipe, ~65 min on one thread) writes <out>-v1 first; stage 2 (this module) grows it into v2 in
    <out>-v2a (skipped with --stage2 DIR); stage 3 (this module again, STAGE3's options) continues it into <out>."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python app.py train-tiny", description=pipeline.__doc__.split("\n")[0])
    p.add_argument("--out", default="assets/tiny-llava-shapes")
    p.add_argument("--init", default=None, help="an existing v1 folder: skip stage 1")
    p.add_argument("--stage2", default=None, help="an existing stage-2 folder: skip stages 1 and 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="stages 2 and 3 (the shipped runs used 2; stage 1 uses 1, "
                   "as its shipped run did: results depend on the thread count)")
    p.add_argument("--resume", action="store_true", help="stages 2 and 3 continue from their checkpoints")
    known, rest = p.parse_known_args(argv)
    common = ["--seed", str(known.seed), "--threads", str(known.threads)] + (["--resume"] if known.resume else [])
    stage2 = known.stage2
    if stage2 is None:
        init = known.init
        if init is None:
            from .train import main as stage1

            init = str(known.out).rstrip("/") + "-v1"
            stage1(["--out", init, "--seed", str(known.seed), "--threads", "1"])
        stage2 = str(known.out).rstrip("/") + "-v2a"
        main(["--init", init, "--out", stage2, *common, *rest])
    main(["--init", stage2, "--out", known.out, *common, *STAGE3])
    if (Path(stage2) / "training_v2.json").exists():  # both records beside the weights
        (Path(known.out) / "training_v2.json").write_text((Path(stage2) / "training_v2.json").read_text())
    return 0
