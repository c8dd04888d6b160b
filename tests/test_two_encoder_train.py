"""train_2enc's batch rewrite: v2's one-encoder batches get the conv encoder's 36 placeholders after each frame's
64, with the answers (labels, spans) moved by exactly that much; and its per-cell targets follow the scene."""

from __future__ import annotations

import numpy as np
import torch

from backends.tiny.arch import build_tokenizer
from backends.tiny.batches import video_batch
from backends.tiny.train import Vocab
from backends.tiny.train_2enc import CONV_CELL, image_batch, widen


def test_widen_moves_answers_past_the_conv_placeholders():
    voc = Vocab(build_tokenizer())
    rng = np.random.default_rng(0)
    for nb, frames in [(image_batch(rng, voc, 3), [1, 1, 1]), (video_batch(rng, voc, 1, side=8, frames=(4, 4)), [4])]:
        b = widen(nb, voc.img, voc.pad)
        for i, t in enumerate(frames):
            assert int((b["input_ids"][i] == voc.img).sum()) == 100 * t and int(b["shift"][i]) == 36 * t
            old = nb["labels"][i][nb["labels"][i] != -100]
            assert torch.equal(b["labels"][i][b["labels"][i] != -100], old)  # same answers, same order
            n_old, n_new = int(nb["attention_mask"][i].sum()), int(b["attention_mask"][i].sum())
            assert n_new == n_old + 36 * t
            for (a0, e0, k0), (a1, e1, k1) in zip(nb["turns"][i], b["turns"][i]):
                assert (a1 - a0, e1 - e0, k1) == (36 * t, 36 * t, k0)
                assert torch.equal(b["input_ids"][i, a1:e1], nb["input_ids"][i, a0:e0])


def test_conv_cells_cover_the_scene_grid():
    assert CONV_CELL.reshape(6, 6).tolist() == [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2 + \
        [[6, 6, 7, 7, 8, 8]] * 2
