"""METEOR stages 1-3 on the two-encoder model: keep-all is the baseline, stage-1 budgets follow the stored feature
ranks, stage 2 drops what two encoders both carry, and a one-encoder model still refuses stages 1-3."""

from __future__ import annotations

import pytest
import torch

from backends.types import RequestError
from methods._meteor_encoders import mutual_keep, rank_budgets
from tests.test_methods import hooks
from tests.test_two_encoder import baseline2, run, two_enc, two_enc_dir  # noqa: F401  (fixtures)

ALL = {"stages": "1-3", "encoder_keep": 1.0, "fusion_keep": 1.0, "lam": 1e6}


def test_keep_all_reproduces_the_two_encoder_baseline(two_enc, scene_png, baseline2):  # noqa: F811
    res = run(two_enc, scene_png, "meteor", ALL)
    assert res.ok and res.output_ids == baseline2.output_ids
    assert res.visual_tokens.kept == 100 and res.visual_tokens.per_layer == [100] * 8
    assert res.info["stage_kept"] == [100, 100, 100] and res.info["encoder_kept"] == {"clip": [64] * 3,
                                                                                      "conv": [36] * 3}


def test_stage1_budgets_follow_the_stored_ranks(two_enc, scene_png, monkeypatch):  # noqa: F811
    cfg = two_enc.model.config
    monkeypatch.setattr(cfg, "encoder_ranks", [48.0, 16.0])
    before = hooks(two_enc.model)
    a = run(two_enc, scene_png, "meteor", {"stages": "1-3", "encoder_keep": 0.5, "fusion_keep": 0.75})
    assert hooks(two_enc.model) == before
    again = run(two_enc, scene_png, "meteor", {"stages": "1-3", "encoder_keep": 0.5, "fusion_keep": 0.75})
    assert again.output_ids == a.output_ids and again.stage_maps == a.stage_maps
    assert a.info["encoder_budgets"] == {"clip": 38, "conv": 12}  # 50 x 48/64 = 37.5, 50 x 16/64 = 12.5
    assert a.info["encoder_kept"]["clip"][0] == 38 and a.info["encoder_kept"]["conv"][0] == 12
    assert a.info["stage_kept"][:2] == [50, 38] and a.info["stage_kept"][2] == a.info["adaptive_kept"]
    assert a.visual_tokens.kept == 38 and a.visual_tokens.per_layer[-1] == a.info["adaptive_kept"]
    assert len(a.stage_maps) == 3 and len(a.info["encoder_maps"]["conv"][0][0]) == 6
    monkeypatch.setattr(cfg, "encoder_ranks", [16.0, 48.0])
    b = run(two_enc, scene_png, "meteor", {"stages": "1-3", "encoder_keep": 0.5})
    assert b.info["encoder_budgets"] == {"clip": 14, "conv": 36}  # conv would get 37.5 > 36 cells: the rest to clip
    monkeypatch.setattr(cfg, "encoder_ranks", None)
    with pytest.raises(RequestError, match="feature rank.*train_2enc --ranks"):
        run(two_enc, scene_png, "meteor", {"stages": "1-3"})


def test_stored_ranks_differ_between_encoders(two_enc):  # noqa: F811
    r = two_enc.model.config.encoder_ranks
    assert len(r) == 2 and r[0] != r[1] and all(x >= 1 for x in r)


def test_rank_budgets():
    assert rank_budgets(50, [3, 1], [64, 36]) == [38, 12]  # 37.5 / 12.5: the remainder to the first
    assert rank_budgets(60, [1, 100], [64, 36]) == [24, 36]
    assert rank_budgets(100, [1, 1], [64, 36]) == [64, 36]
    assert rank_budgets(1, [1, 1], [64, 36]) == [1, 1]  # every encoder keeps one token


def test_stage2_removes_a_token_both_encoders_carry():
    e = torch.eye(6)
    z = torch.stack([e[0], e[1], e[2], e[3], e[0] + 0.01 * e[5], e[4]])  # encoder A: 4 tokens, B: 2 (B0 ~ A0)
    enc = torch.tensor([0, 0, 0, 0, 1, 1])
    kept = mutual_keep(z, enc, 5).tolist()
    assert len(kept) == 5 and {1, 2, 3, 5} <= set(kept) and len({0, 4} & set(kept)) == 1


def test_one_encoder_model_still_refuses_stages_1_3(random_model, scene_png):
    from tests.test_methods import run as run1

    with pytest.raises(RequestError, match="this model has one vision encoder"):
        run1(random_model, scene_png, "meteor", {"stages": "1-3"})
