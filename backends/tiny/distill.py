"""What the twig and hybrid trainings share: the frozen base, its training batches, a log, a one-thread setup.

The base is whatever model folder is given (v1: 64-row vocabulary, one-word answers; v2: 96 rows, with
descriptions). Batches come from the lead's task generators: v2's `batches.image_batch` (1-5 turn conversations
over the five v1 kinds and descriptions), or v1's `train.make_batch` (three one-word questions per scene) when the
folder's tokenizer has no v2 words. Video is left out: both extras act on the decoder, and image conversations
already carry long answers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import arch
from .losses_v2 import visual_features
from .train import DEFAULT_WEIGHTS, Vocab, make_batch


def one_thread() -> None:
    """The machine has two cores and the base model trains on the other: one thread, no spinning waits."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


def run_args(doc: str, what: str, default_file: str, lr: float, extra_first=()) -> argparse.ArgumentParser:
    """The options both extras' trainings take (base folder, output file, resume checkpoint, warm start, budget,
    batch, learning rate, evaluation interval, seed); each trainer adds its own after `extra_first`'s."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--model", required=True, help="the base model folder (its weights stay frozen)")
    ap.add_argument("--out", default="", help=f"{what} file (default MODEL/{default_file})")
    ap.add_argument("--ckpt", default=f"runs/{what}-ckpt.pt", help="checkpoint for --resume")
    ap.add_argument("--init", default="", help=f"start from this {what} file (e.g. one trained on an earlier base)")
    for flag, kw in extra_first:
        ap.add_argument(flag, **kw)
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget (the run stops after it)")
    ap.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    ap.add_argument("--batch", type=int, default=16, help="scenes per batch")
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    return ap


def load_base(model_dir: str):
    """(model in fp32 eval mode with every weight frozen, processor)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), AutoProcessor.from_pretrained(model_dir)


def start_run(args):
    """What both trainers do first: one thread, a log, the seed, the frozen base. Returns (log, model, processor,
    vocab)."""
    one_thread()
    log = Log()
    torch.manual_seed(args.seed)
    model, proc = load_base(args.model)
    return log, model, proc, Vocab(proc.tokenizer)


def is_v2(model) -> bool:
    return model.config.text_config.vocab_size > arch.V1_VOCAB_SIZE


def batch(model, voc: Vocab, rng, n_img: int) -> dict:
    """One training batch: input_ids/labels/attention_mask [B, L], pixel_values [B, 3, 128, 128], sides, frames."""
    if is_v2(model):
        from .batches import image_batch

        return image_batch(rng, voc, n_img)
    b = make_batch(rng, voc, n_img, 3, DEFAULT_WEIGHTS)
    b.update(sides=[arch.IMAGE_SIZE // arch.PATCH] * n_img, frames=[1] * n_img)
    return b


@torch.no_grad()
def embed(model, b: dict) -> torch.Tensor:
    """The LLM's input embeddings [B, L, D], visual features spliced in (frozen tower and projector)."""
    feats = visual_features(model, b["pixel_values"], b["sides"], b["frames"])
    emb = model.model.language_model.get_input_embeddings()(b["input_ids"])
    mask = (b["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    return emb.masked_scatter(mask, feats.to(emb.dtype))


def check_set(model, voc: Vocab, seed: int, n: int = 4, n_img: int = 24) -> list[dict]:
    """Fixed held-back batches (their own seed) for the agreement/accuracy figures the logs print."""
    rng = np.random.default_rng(seed + 10_000)
    return [batch(model, voc, rng, n_img) for _ in range(n)]


class Log:
    """Lines to stdout (nohup sends them to the log file) with minutes since start."""

    def __init__(self):
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        print(f"[{(time.time() - self.t0) / 60:6.2f} min] {msg}", flush=True)

    @property
    def minutes(self) -> float:
        return (time.time() - self.t0) / 60


def record(path: Path, command: str, args, extra: dict) -> None:
    """A JSON record of how a file was made (command, versions, results), next to it; a run started from an earlier
    file (--init) carries that file's own record, so the whole chain of trainings is written down."""
    import transformers

    init = Path(getattr(args, "init", "") or "")
    if init.name and init.with_suffix(".json").is_file():
        extra = {**extra, "init_record": json.loads(init.with_suffix(".json").read_text())}

    path.write_text(json.dumps({
        "command": " ".join([command] + sys.argv[1:]),
        "args": vars(args), "torch": torch.__version__, "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), **extra,
    }, indent=1))
