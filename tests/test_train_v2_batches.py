"""v2 training batches: the start/end cell targets of direction questions follow the clip (the answer's move),
sit on the question's shape word, and a clip with no askable question adds no NaN to the loss; resized training
images equal the processor's output for that upload; the vision tower gets gradients only when it is trained; the KL to
a v1 teacher is exact on its smaller vocabulary, and the pipeline hands stages 7 and 8 their v1 folder."""

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


def test_resized_training_images_are_exactly_what_the_processor_makes_of_that_upload():
    from PIL import Image

    from backends.tiny.render_train import render, resized
    from backends.tiny.scenes import sample_scene
    from backends.tiny.train import pixels

    proc = arch.build_processor()
    objs = sample_scene(np.random.default_rng(3), 4)
    for seed in range(4):
        got = resized(objs, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        side = int(r.integers(80, 321))
        upload = Image.fromarray(render(objs, r, side))  # the same draw, as a user's upload of that size
        want = proc.image_processor(images=upload, return_tensors="np")["pixel_values"][0]
        assert got.shape == (128, 128, 3) and np.array_equal(pixels(got), want)


def test_tower_gets_gradients_only_when_asked():
    tok = arch.build_tokenizer()
    voc = Vocab(tok)
    model = arch.build_model(tok, seed=0)
    args = argparse.Namespace(w_ds=0.0, w_att=0.0, w_cell=0.0)
    ds = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    tower = model.model.vision_tower
    from backends.tiny.batches import image_batch

    b = image_batch(np.random.default_rng(0), voc, 2, resize_aug=1.0)
    for trainable in (False, True):
        model.zero_grad(set_to_none=True)
        for p in tower.parameters():
            p.requires_grad_(trainable)
        losses(model, ds, b, args)[0].backward()
        grads = [p.grad for p in tower.parameters()]
        assert all((g is not None and g.abs().sum() > 0) if trainable else g is None for g in grads[:4])
        assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_w_shared_weighs_exactly_the_shape_words_and_colour_targets_of_objects_sharing_a_colour():
    """--w-shared: the same batch plus weights; > 1 only on the shape word (and the colour word's attention target) of
    a described object whose colour another one in its scene has; all-one weights give the unweighted losses."""
    from backends.tiny.batches import image_batch
    from backends.tiny.losses_v2 import weighted_lm_loss
    from backends.tiny.train import lm_loss

    voc = Vocab(arch.build_tokenizer())
    only = {"describe": 1.0, **{k: 0.0 for k in ("color", "shape_at", "count", "total", "exists")}}
    kw = dict(turns=(1, 1), weights=only, color_att=True, same_color=0.5)
    plain = image_batch(np.random.default_rng(5), voc, 12, **kw)
    heavy = image_batch(np.random.default_rng(5), voc, 12, **kw, w_shared=4.0)
    assert "lm_w" not in plain and all(torch.equal(plain[k], heavy[k]) for k in plain if torch.is_tensor(plain[k]))
    want = set()
    for i in range(12):
        a, e, _ = heavy["turns"][i][0]
        words = [voc.tok.convert_ids_to_tokens(int(t)) for t in heavy["input_ids"][i, a:e - 1]]
        objs = [(a + j, words[j + 1]) for j, w in enumerate(words) if w == "a"]
        want |= {(i, p + 2) for p, c in objs if sum(c == c2 for _, c2 in objs) > 1}
    assert want and {tuple(x) for x in (heavy["lm_w"] == 4.0).nonzero().tolist()} == want
    assert int((heavy["lm_w"] != 1).sum()) == len(want)
    colour_words = {(r, c - 1) for r, c in want}
    got = {(r, c) for r, c, w in zip(heavy["at_rows"].tolist(), heavy["at_cols"].tolist(), heavy["at_w"]) if w == 4}
    assert got == colour_words and int((heavy["at_w"] != 1).sum()) == len(want)
    logits = torch.randn(*plain["input_ids"].shape, arch.VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    ones = {**heavy, "lm_w": torch.ones_like(heavy["lm_w"])}
    assert torch.allclose(weighted_lm_loss(logits, ones, {}), lm_loss(logits, plain["labels"]))
    assert not torch.allclose(weighted_lm_loss(logits, heavy, {}), lm_loss(logits, plain["labels"]))


def test_shared_scope_scene_weighs_every_object_of_a_scene_where_two_share_a_colour():
    """--shared-scope scene: in a description whose scene has two objects of one colour, every object's colour and
    shape words weigh w and its 'a' and colour-word attention targets too; scenes of distinct colours stay at 1."""
    from backends.tiny.batches import image_batch

    voc = Vocab(arch.build_tokenizer())
    only = {"describe": 1.0, **{k: 0.0 for k in ("color", "shape_at", "count", "total", "exists")}}
    kw = dict(turns=(1, 1), weights=only, color_att=True, same_color=0.5, w_shared=4.0)
    plain = image_batch(np.random.default_rng(5), voc, 12, **kw)
    scene = image_batch(np.random.default_rng(5), voc, 12, **kw, shared_scope="scene")
    same = [k for k in plain if torch.is_tensor(plain[k]) and k not in ("lm_w", "at_w")]
    assert all(torch.equal(plain[k], scene[k]) for k in same)
    want_lm, want_at = set(), set()
    for i in range(12):
        a, e, _ = scene["turns"][i][0]
        words = [voc.tok.convert_ids_to_tokens(int(t)) for t in scene["input_ids"][i, a:e - 1]]
        objs = [(a + j, words[j + 1]) for j, w in enumerate(words) if w == "a"]
        if len({c for _, c in objs}) < len(objs):
            want_lm |= {(i, p + k) for p, _ in objs for k in (1, 2)}
            want_at |= {(i, p + k) for p, _ in objs for k in (0, 1)}
    assert want_lm and {tuple(x) for x in (scene["lm_w"] == 4.0).nonzero().tolist()} == want_lm
    assert int((scene["lm_w"] != 1).sum()) == len(want_lm)
    got = {(r, c) for r, c, w in zip(scene["at_rows"].tolist(), scene["at_cols"].tolist(), scene["at_w"]) if w == 4}
    assert got == want_at and int((scene["at_w"] != 1).sum()) == len(want_at)
    assert int((scene["lm_w"] == 4).sum()) > int((plain["lm_w"] == 4).sum())


def test_kind_loss_weights_only_the_named_kinds_answers():
    from backends.tiny.batches import image_batch
    from backends.tiny.losses_v2 import weighted_lm_loss
    from backends.tiny.train import lm_loss

    voc = Vocab(arch.build_tokenizer())
    b = image_batch(np.random.default_rng(1), voc, 6, turns=(3, 3))
    logits = torch.randn(*b["input_ids"].shape, arch.VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    plain = lm_loss(logits, b["labels"])
    assert torch.allclose(weighted_lm_loss(logits, b, {}), plain)
    assert torch.allclose(weighted_lm_loss(logits, b, {"no_such_kind": 5.0}), plain)
    kinds = {k for spans in b["turns"] for _, _, k in spans}
    kind = sorted(kinds)[0]
    # Weight 3 on one kind = that kind's tokens counted three times in a plain mean.
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                                           ignore_index=-100, reduction="none").view(len(b["turns"]), -1)
    tot, n = 0.0, 0
    for i, spans in enumerate(b["turns"]):
        for a, e, k in spans:
            m = 3 if k == kind else 1
            tot, n = tot + m * ce[i, a - 1:e - 1].sum(), n + m * (e - a)
    assert torch.allclose(weighted_lm_loss(logits, b, {kind: 3.0}), tot / n)


def test_same_color_scenes_have_two_to_four_objects_in_at_most_two_colours_and_off_changes_nothing():
    from backends.tiny.batches import train_scene
    from backends.tiny.scenes import sample_scene

    scenes = [train_scene(np.random.default_rng(i), 1.0) for i in range(200)]
    assert all(2 <= len(s) <= 4 and len({o.color for o in s}) <= 2 for s in scenes)
    assert {len({o.color for o in s}) for s in scenes} == {1, 2}
    for i in range(20):  # off: exactly the spec's sampler, draw for draw
        assert train_scene(np.random.default_rng(i)) == sample_scene(np.random.default_rng(i))


def test_teacher_loss_is_zero_against_itself_and_reads_a_smaller_vocabulary():
    """The KL to a teacher: 0 for the model itself; a teacher with fewer output rows (v1: 64) gives the student's extra
    rows probability 0, so a student that is the teacher plus 8 rows of logit 0 is off by exactly log(1 + 8 / Z),
    Z = the teacher's sum of exp(logits), at each answer position."""
    import copy

    from backends.tiny.batches import image_batch
    from backends.tiny.losses_v2 import forward, teacher_loss

    tok = arch.build_tokenizer()
    voc = Vocab(tok)
    v1_kinds = {"color": 1.0, "shape_at": 1.0, "count": 1.0, "total": 1.0, "exists": 1.0, "describe": 0.0}
    b = image_batch(np.random.default_rng(5), voc, 4, turns=(1, 1), weights=v1_kinds)
    teacher = arch.build_model(tok, seed=0).float().eval()
    assert teacher_loss(teacher, teacher, b).item() < 1e-6
    student = copy.deepcopy(teacher)
    head = teacher.lm_head.weight
    student.lm_head = torch.nn.Linear(head.shape[1], head.shape[0] + 8, bias=False)
    with torch.no_grad():
        student.lm_head.weight.copy_(torch.cat([head, torch.zeros(8, head.shape[1])]))
        _, logits, _ = forward(teacher, b, None)
    pos = [(i, c) for i, spans in enumerate(b["turns"]) for a, e, _ in spans for c in range(a - 1, e - 1)]
    z = torch.stack([logits[i, c].exp().sum() for i, c in pos])
    expected = torch.log(1 + 8 / z).mean()
    assert torch.allclose(teacher_loss(student, teacher, b), expected, rtol=1e-4)


def test_the_pipeline_gives_stages_7_and_8_their_v1_teacher_and_stops_without_one(tmp_path, monkeypatch):
    import pytest

    from backends.tiny import pipeline
    from backends.tiny.train_v2 import parse_args

    calls = []
    monkeypatch.setattr(pipeline, "main", lambda a: calls.append(a))
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "config.json").write_text("{}")
    out = str(tmp_path / "out")
    pipeline.pipeline(["--from", str(tmp_path / "s6"), "--stage", "6", "--v1", str(v1), "--out", out])
    stage7, stage8 = (parse_args(c) for c in calls)
    for args in (stage7, stage8):
        assert args.teacher == str(v1) and args.w_teach == 1 and args.teach_temp == 2 and args.threads == 1
    assert stage7.out == out + "-v7" and stage8.init == stage7.out and stage8.out == out
    assert (stage7.lr, stage7.w_shared, stage7.shared_scope) == (1.5e-4, 1.0, "object")
    assert (stage8.lr, stage8.w_shared, stage8.shared_scope, stage8.record) == (3e-4, 5.0, "scene", "training_v8.json")
    with pytest.raises(SystemExit):  # no v1 folder at <out>-v1 and none given
        pipeline.pipeline(["--from", str(tmp_path / "s6"), "--stage", "6", "--out", out])
    assert len(calls) == 2
