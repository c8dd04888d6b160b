"""Count probe for the built-in model: how many objects of one colour it counts, by how many there are and their size.

    python scripts/count_probe.py [--model DIR] [--per-cell 24]

Each scene: n objects (1-3) of the asked colour, all of one size (0.42 / 0.60 / 0.83 of a cell), centred in random
cells, plus one square of another colour; drawn at 128 px without noise by the held-out renderer (`render_eval`),
asked `how many {colour} shapes are there?` through the app's runner. Prints right answers per (n, size). Seeded
(`np.random.default_rng(5)`), so two models see the same scenes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends import media, runner  # noqa: E402
from backends.cli import method_specs  # noqa: E402
from backends.evaluate import normalize  # noqa: E402
from backends.models import load_model  # noqa: E402
from backends.settings import Settings  # noqa: E402
from backends.tiny.arch import COLORS, NUMBERS, SHAPES  # noqa: E402
from backends.tiny.render_eval import render  # noqa: E402
from backends.tiny.scenes import Obj  # noqa: E402
from backends.types import GenerationSettings, RunRequest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin")
    p.add_argument("--per-cell", type=int, default=24)
    args = p.parse_args(argv)
    settings = Settings.from_env()
    lm = load_model(args.model, settings)
    spec = method_specs("baseline", None, {})[0]
    gen = GenerationSettings(max_new_tokens=4, warmup=0, repeats=1)
    rng = np.random.default_rng(5)
    print("| objects of the asked colour | size 0.42 | size 0.60 | size 0.83 |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 3):
            row = []
            for size in (0.42, 0.6, 0.83):
                ok = 0
                for i in range(args.per_cell):
                    col = COLORS[i % len(COLORS)]
                    cells = rng.choice(9, size=n + 1, replace=False)
                    objs = [Obj(int(c), SHAPES[int(rng.integers(3))], col, size, 0.5, 0.5) for c in cells[:n]]
                    other = [c for c in COLORS if c != col][int(rng.integers(len(COLORS) - 1))]
                    objs.append(Obj(int(cells[-1]), "square", other, 0.7, 0.5, 0.5))
                    path = Path(tmp) / f"probe_{i}.png"
                    render(objs, rng, size=128, noise=False).save(path)
                    r = runner.run(RunRequest(media.image_media(path, settings), f"how many {col} shapes are there?",
                                              spec, gen), lm, settings)
                    ok += normalize(r.answer) == NUMBERS[n]
                row.append(f"{ok} / {args.per_cell}")
            print(f"| {NUMBERS[n]} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
