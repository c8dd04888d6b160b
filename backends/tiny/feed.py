"""The v2 trainer's batches, drawn a few steps ahead in a second process while the first one trains.

Drawing a step's batches (rendering ~60 images and frames, packing the conversations) took ~14% of a one-thread
step, on one core while the other idled. `Feed` moves that draw to a child process that owns the data generator: it
draws the steps in the same order from the same generator state, so a run with it trains on exactly the batches (and
ends with exactly the weights) of a run without it; each step arrives with the generator's state after its draw,
which the trainer's checkpoint keeps, so `--resume` continues the same stream.

    with Feed(args, img_w, kinds, v1_w, rng_state, start) as feed:
        for step in range(start, args.steps + 1):
            work, tb, rng_state = feed.next(step)
"""

from __future__ import annotations

import pickle
import queue

import numpy as np
import torch

from . import arch
from .batches import image_batch, video_batch
from .train import Vocab


def step_batches(rng, voc: Vocab, args, img_w: dict, kinds: dict | None, v1_w: dict | None):
    """One step's batches, drawn in the trainer's order: [(name, batch, loss weight)] (one image batch, then each clip
    alone, weighted 1/clips), and the teacher's one-turn batch (None without --teacher)."""
    work = [("img", image_batch(rng, voc, args.images, weights=img_w, color_att=args.att_color,
                                max_describe=args.max_describe, resize_aug=args.resize_aug,
                                same_color=args.same_color, w_shared=args.w_shared,
                                shared_scope=args.shared_scope), 1.0)]
    work += [("vid", video_batch(rng, voc, 1, kinds=kinds), 1.0 / args.clips) for _ in range(args.clips)]
    tb = None
    if v1_w is not None:
        tb = image_batch(rng, voc, args.teach_images, turns=(1, 1), weights=v1_w, resize_aug=args.resize_aug,
                         same_color=args.same_color)
    return work, tb


def _produce(out, args, img_w, kinds, v1_w, state, start):
    """The child: draws steps start..args.steps into `out` (bounded: it waits while the trainer is behind)."""
    torch.set_num_threads(1)
    voc = Vocab(arch.build_processor().tokenizer)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    for step in range(start, args.steps + 1):
        work, tb = step_batches(rng, voc, args, img_w, kinds, v1_w)
        # Pickled here to bytes (tensors by value): no shared-memory handles to outlive either process.
        out.put(pickle.dumps((step, work, tb, rng.bit_generator.state), protocol=pickle.HIGHEST_PROTOCOL))


class Feed:
    """Context manager over the child process; `next(step)` returns that step's (work, teacher batch, rng state)."""

    def __init__(self, args, img_w, kinds, v1_w, rng_state: dict, start: int, ahead: int = 3):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process whose torch thread pools are running
        self.q = ctx.Queue(maxsize=ahead)
        self.proc = ctx.Process(target=_produce, args=(self.q, args, img_w, kinds, v1_w, rng_state, start),
                                daemon=True, name="train-v2-feed")

    def __enter__(self):
        self.proc.start()
        return self

    def next(self, step: int):
        while True:
            try:
                got, work, tb, state = pickle.loads(self.q.get(timeout=10))
                break
            except queue.Empty:
                if not self.proc.is_alive():  # a crash in the child is the run's error, not a hang
                    code = self.proc.exitcode
                    raise RuntimeError(f"the batch feed stopped (exit code {code}) before step {step}") from None
        if got != step:
            raise RuntimeError(f"the batch feed sent step {got} for step {step}")
        return work, tb, state

    def __exit__(self, *exc):
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=10)
        self.q.close()
        self.q.cancel_join_thread()  # whatever it still holds is not needed
        return False
