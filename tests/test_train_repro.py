"""A training run repeats itself: the batch feed (backends/tiny/feed.py) draws exactly the batches and generator
states the trainer would draw itself, from the first step and from a resumed one (and a feed whose child dies raises
instead of hanging); and a two-thread backward gives the same gradients every time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.tiny import arch
from backends.tiny.batches import IMAGE_WEIGHTS
from backends.tiny.feed import Feed, step_batches
from backends.tiny.losses_v2 import attention_loss_at
from backends.tiny.scenes import KINDS
from backends.tiny.train import Vocab
from backends.tiny.train_v2 import parse_args

ARGS = ["--steps", "4", "--images", "3", "--clips", "2", "--att-color", "--resize-aug", "0.5", "--same-color", "0.5",
        "--w-shared", "5", "--shared-scope", "scene", "--max-describe", "3", "--teach-images", "2"]
IMG_W = {**IMAGE_WEIGHTS, "count": 0.3, "describe": 0.45}
V1_W = {k: (w if k in KINDS else 0.0) for k, w in IMG_W.items()}  # as train_v2 gives the teacher's batches


def same(a, b) -> bool:
    """Equal batches: every tensor equal in dtype, shape and value; every other field equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def inline(args, rng, steps, v1_w):
    voc = Vocab(arch.build_processor().tokenizer)
    return [(*step_batches(rng, voc, args, IMG_W, None, v1_w), rng.bit_generator.state)
            for _ in steps]


@pytest.mark.parametrize("teacher", [False, True])
def test_the_feed_draws_the_trainers_own_batches_from_the_start_and_after_a_resume(teacher):
    args = parse_args(ARGS)
    v1_w = V1_W if teacher else None
    want = inline(args, np.random.default_rng(2000), range(1, 5), v1_w)
    assert (want[0][1] is not None) == teacher and len(want[0][0]) == 1 + args.clips
    for start in (1, 3):  # a resumed run starts its feed from the checkpoint's state, that of the step before
        state = np.random.default_rng(2000).bit_generator.state if start == 1 else want[start - 2][2]
        with Feed(args, IMG_W, None, v1_w, state, start) as feed:
            got = [feed.next(step) for step in range(start, 5)]
        assert same(got, want[start - 1:])


def test_a_feed_whose_child_died_raises_instead_of_waiting():
    args = parse_args(ARGS)
    state = np.random.default_rng(2000).bit_generator.state
    with Feed(args, IMG_W, None, None, state, 1) as feed:
        feed.next(1)
        feed.proc.kill()
        feed.proc.join()
        with pytest.raises(RuntimeError, match="stopped"):
            for step in range(2, 5):  # up to `ahead` steps may already wait in the queue
                feed.next(step)


def test_a_two_thread_backward_of_the_attention_aux_gives_the_same_gradients_every_time():
    """The attention aux reads a whole sequence once per query, so rows repeat; x[rows]'s backward added the repeats in
    a racing order on two threads (20 of 20 repeats differed here; a stage's weights differed run to run)."""
    model = arch.build_model(arch.build_tokenizer(), seed=0)
    g = torch.Generator().manual_seed(0)
    n, L = 96, 160
    emb = torch.randn(12, L, model.config.text_config.hidden_size, generator=g, requires_grad=True)
    tmask = torch.zeros(n, L, dtype=torch.bool)
    tmask[:, 1:65] = True  # the image tokens
    b = dict(at_rows=torch.arange(n) % 12, at_cols=70 + torch.randint(0, 80, (n,), generator=g), at_mask=tmask,
             at_heads=torch.randint(0, 2, (n,), generator=g))

    def grad() -> torch.Tensor:
        emb.grad = None
        attention_loss_at(model, emb, b, 0).sum().backward()
        return emb.grad.clone()

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = grad()
        assert all(torch.equal(grad(), first) for _ in range(10))
    finally:
        torch.set_num_threads(before)
