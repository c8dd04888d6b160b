"""Stage-2 training batches: the start/end cell targets of direction questions follow the clip (the answer's move),
sit on the question's shape word, and a clip with no askable question adds no NaN to the loss."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from backends.tiny import arch
from backends.tiny.batches import video_batch
from backends.tiny.clips import MOVES
from backends.tiny.losses_v2 import losses
from backends.tiny.train import Vocab


def test_direction_cells_follow_the_move_and_sit_on_the_shape_word():
    voc = Vocab(arch.build_tokenizer())
    shapes = {voc.tok.convert_tokens_to_ids(s) for s in ("circle", "square", "triangle")}
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        b = video_batch(rng, voc, 1, kinds={"direction": 1.0}, frames=(4, 4), side=2)
        answers = [voc.tok.decode(b["input_ids"][0, a:e - 1]).strip() for a, e, _ in b["turns"][0]]
        assert len(b["cell_rows"]) == len(answers)  # one (start, end) pair per direction question
        for col, (start, end), ans in zip(b["cell_cols"].tolist(), b["cell_tgt"].tolist(), answers):
            assert int(b["input_ids"][0, col]) in shapes
            seen.add(ans)
            if ans == "still":
                assert start == end
                continue
            (r0, c0), (r1, c1) = divmod(start, 3), divmod(end, 3)
            dr, dc = MOVES[ans]
            steps = max(abs(r1 - r0), abs(c1 - c0))
            assert steps in (1, 2) and (r1 - r0, c1 - c0) == (dr * steps, dc * steps)
    assert {"left", "right", "up", "down", "still"} <= seen


def test_a_batch_without_answers_adds_zero_loss_not_nan():
    tok = arch.build_tokenizer()
    voc = Vocab(tok)
    model = arch.build_model(tok, seed=0)
    b = video_batch(np.random.default_rng(0), voc, 1, kinds={"direction": 1.0}, frames=(4, 4), side=2)
    b["labels"][:] = -100  # as when no object of the clip is unique by colour and shape
    args = argparse.Namespace(w_ds=0.5, w_att=0.0, w_cell=0.5)
    head = torch.nn.Linear(model.config.text_config.hidden_size, 18)
    ds = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    loss, parts = losses(model, ds, b, args, head)
    assert torch.isfinite(loss) and parts["lm"] == 0.0 and parts["cell"] > 0


def test_color_att_adds_one_target_per_described_colour_word_on_that_objects_cell():
    """With color_att, every described object's colour word attends to the same cell as its opening `a`; without it
    the batch is what earlier stages trained on (same draws, same targets)."""
    from backends.tiny.batches import image_batch

    voc = Vocab(arch.build_tokenizer())
    colors = {voc.tok.convert_tokens_to_ids(c) for c in ("red", "green", "blue", "yellow", "purple", "orange")}
    only = {"describe": 1.0, **{k: 0.0 for k in ("color", "shape_at", "count", "total", "exists")}}
    plain = image_batch(np.random.default_rng(3), voc, 4, turns=(1, 1), weights=only)
    both = image_batch(np.random.default_rng(3), voc, 4, turns=(1, 1), weights=only, color_att=True)
    assert torch.equal(plain["input_ids"], both["input_ids"])
    a_tok = voc.a("a")
    opens = [(r, c) for r, c in zip(plain["at_rows"].tolist(), plain["at_cols"].tolist())]
    assert all(int(plain["input_ids"][r, c]) == a_tok for r, c in opens)
    extra = {(r, c): m for r, c, m in zip(both["at_rows"].tolist(), both["at_cols"].tolist(), both["at_mask"])
             if (r, c) not in opens}
    assert len(extra) == len(opens) and all(int(both["input_ids"][r, c]) in colors for r, c in extra)
    masks = dict(zip(opens, plain["at_mask"]))
    assert all(torch.equal(m, masks[(r, c - 1)]) for (r, c), m in extra.items())  # the object's own cell


def test_max_describe_lets_a_conversation_ask_for_the_description_again_in_other_words():
    """Users ask twice ("describe the image", later "list the shapes"): with max_describe=3 a describe-only mix gives
    three differently worded descriptions per 3-turn conversation, each with the same answer; the default keeps one."""
    from backends.tiny.batches import sample_image_turns
    from backends.tiny.scenes import DESCRIBE_PROMPTS, sample_scene

    only = {"describe": 1.0, **{k: 0.0 for k in ("color", "shape_at", "count", "total", "exists")}}
    rng = np.random.default_rng(5)
    for _ in range(10):
        objs = sample_scene(rng)
        three = sample_image_turns(objs, rng, 3, only, max_describe=3)
        assert sorted(q["question"] for q in three) == sorted(DESCRIBE_PROMPTS)
        assert len({q["answer"] for q in three}) == 1
        assert len(sample_image_turns(objs, rng, 3, only)) == 1
