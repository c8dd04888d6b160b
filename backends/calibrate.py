"""ShortV calibration: rank a model's decoder layers by how much they change the answer through the image.

    python app.py calibrate-shortv [--model NAME] [--data FILE.jsonl] [--n 20]

For each request, LC_i = KL(p_mod || p_orig) of the last prompt token's next-token distribution, where
p_mod comes from the model with layer i's updates to the visual positions zeroed (the same frozen-layer
forward ShortV runs). The mean over requests, sorted ascending, is stored per model (see
`methods.shortv.calibration_path`). Without --data the built-in model calibrates on 20 scenes generated
from a fixed seed (never its held-out set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from backends.models import load_model
from backends.runner import build_sequence
from backends.settings import BUILTIN, Settings
from backends.state import RunState
from methods.shortv import calibration_path, freeze_layers

CALIBRATION_SEED = 31337


def _generated(n: int) -> list[tuple]:
    import numpy as np
    from PIL import Image

    from backends.tiny import render_train, scenes

    rng = np.random.default_rng(CALIBRATION_SEED)
    out = []
    while len(out) < n:
        objs = scenes.sample_scene(rng)
        q = scenes.sample_questions(objs, rng, 1)[0]
        out.append((Image.fromarray(render_train.render(objs, rng)), q["question"]))
    return out


def _from_file(path: str, n: int, settings: Settings) -> list[tuple]:
    from backends import media

    base, out = Path(path).parent, []
    for line in Path(path).read_text().splitlines()[:n]:
        item = json.loads(line)
        out.append((media.frames_of(media.image_media(base / item["image"], settings), settings)[0],
                    item["question"]))
    return out


def prompt_input(lm, image, question: str):
    """Vision tower + projector once per calibration request: (run state, inputs_embeds, position ids)."""
    ad = lm.adapter
    inputs = ad.preprocess([image], question)
    state = RunState(ad, inputs["input_ids"].to(lm.device), inputs["pixel_values"].to(lm.device, lm.dtype), question)
    with torch.inference_mode():
        state.encode_vision()
        embeds, pos = build_sequence(state)
    return state, embeds, pos


def last_token_logprobs(lm, state, embeds, pos, frozen: list[int]) -> torch.Tensor:
    """Next-token log-probabilities at the prompt's last position, with `frozen` layers' visual updates zeroed."""
    ad = lm.adapter
    with torch.inference_mode(), freeze_layers(state, frozen) if frozen else nullcontext():
        out = ad.language_model(inputs_embeds=embeds, position_ids=pos,
                                attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long, device=lm.device))
        return torch.log_softmax(ad.lm_head(out.last_hidden_state[:, -1]).float(), -1)[0]


def calibrate(lm, samples: list[tuple]) -> list[float]:
    depth = len(lm.adapter.layers)
    lc = [0.0] * depth
    for image, question in samples:
        state, embeds, pos = prompt_input(lm, image, question)
        orig = last_token_logprobs(lm, state, embeds, pos, [])
        for i in range(depth):
            mod = last_token_logprobs(lm, state, embeds, pos, [i])
            lc[i] += float((mod.exp() * (mod - orig)).sum()) / len(samples)  # KL(p_mod || p_orig)
    return lc


def write_calibration(lm, samples: list[tuple], model: str, data: str) -> tuple[Path, list[int]]:
    """Calibrate and store the layer ranking where ShortV looks for it; returns (path, layers in order)."""
    lc = calibrate(lm, samples)
    order = sorted(range(len(lc)), key=lambda i: (lc[i], i))
    path = calibration_path(str(lm.model.name_or_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"model": model, "layers_by_contribution": order, "lc": [round(x, 6) for x in lc],
           "samples": len(samples), "data": data,
           "metric": "mean KL(p_mod || p_orig) of the last prompt token, visual updates of one layer zeroed"}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path, order


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="app.py calibrate-shortv")
    p.add_argument("--model", default=BUILTIN)
    p.add_argument("--data", default=None, help="jsonl of {image, question} (default: generated, built-in only)")
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args(argv)
    settings = Settings.from_env()
    torch.set_num_threads(settings.threads)
    lm = load_model(args.model, settings)
    if args.data:
        samples = _from_file(args.data, args.n, settings)
    elif args.model == BUILTIN:
        samples = _generated(args.n)
    else:
        print("error: --data FILE.jsonl is needed to calibrate a model other than the built-in one", file=sys.stderr)
        return 2
    t0 = time.time()
    path, order = write_calibration(lm, samples, args.model, args.data or f"generated scenes, seed {CALIBRATION_SEED}")
    print(f"{path}: layers by contribution {order} ({time.time() - t0:.1f} s)")
    return 0
