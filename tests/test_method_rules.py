"""Each method's own rule on a hand-made input whose right answer is known."""

import pytest
import torch

from methods._util import cls_attention, pool_grid, pool_shape
from methods.dynamic_vlm import tokens_per_frame
from methods.folder import bipartite_merge
from methods.prumerge import iqr_outliers, merge_into, uniform_extras


def test_prumerge_iqr_finds_the_two_outliers_by_score():
    a = torch.linspace(0.01, 0.02, 64)  # Q1 ~ 0.0125, Q3 ~ 0.0175: threshold ~ 0.025
    a[10], a[40] = 0.2, 0.3
    assert iqr_outliers(a).tolist() == [40, 10]


def test_prumerge_merges_the_most_key_similar_tokens_weighted_by_attention():
    x = torch.eye(6)
    keys = torch.tensor([[1, 0], [1, 0.1], [0, 1], [0, 1], [1, 0.05], [-1, 0]], dtype=torch.float32)
    a = torch.tensor([0.5, 0.1, 0.2, 0.05, 0.1, 0.05])
    merged, coef = merge_into(x, keys, a, torch.tensor([0]), neighbors=2)
    # token 0's two nearest keys are 4 then 1: it becomes x0 + a4 x4 + a1 x1
    assert torch.allclose(merged[0], torch.tensor([1, 0.1, 0, 0, 0.1, 0]))
    assert torch.allclose(coef[0], torch.tensor([1, 0.1, 0, 0, 0.1, 0]))


def test_prumerge_plus_uniform_extras():
    kept = torch.tensor([5, 9])  # ratio 2/64 -> step int(32/3) = 10
    assert uniform_extras(kept, 64).tolist() == [0, 10, 20, 30, 40, 50, 60]


def test_folder_merges_two_identical_tokens_first_and_protects_cls():
    t = 7  # CLS + 6 patches; A = even rows (0, 2, 4, 6), B = odd rows (1, 3, 5)
    metric = torch.eye(t)
    metric[4] = metric[3]  # tokens 4 (in A) and 3 (in B) have identical keys
    x = torch.arange(t, dtype=torch.float32)[:, None].repeat(1, 2)
    cls = torch.zeros(t)
    x2, size, members, _, _ = bipartite_merge(x, torch.ones(t), torch.eye(t), metric, cls, r=1, alpha=5.0)
    # output order: unmerged A (0, 2, 6), then B (1, 3+4, 5)
    assert size.tolist() == [1, 1, 1, 1, 2, 1]
    assert members[4].nonzero().flatten().tolist() == [3, 4] and x2[4].tolist() == [3.5, 3.5]
    assert members[0].nonzero().flatten().tolist() == [0]  # CLS untouched


def test_folder_protection_term_spares_cls_attended_tokens():
    t = 5
    metric = torch.eye(t)
    metric[2] = metric[1]
    metric[4] = metric[3]  # two identical pairs: (2 -> 1) and (4 -> 3)
    cls = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.0])  # the CLS attends strongly to token 2
    _, size, members, _, _ = bipartite_merge(torch.zeros(t, 1), torch.ones(t), torch.eye(t), metric, cls, 1, 5.0)
    merged = [m.nonzero().flatten().tolist() for m, s in zip(members, size) if s == 2]
    assert merged == [[3, 4]]


def test_dynamic_vlm_per_frame_budget_shrinks_as_frames_grow():
    assert tokens_per_frame(144, 1, 64) == (8, 64)  # capped at the frame's own tokens
    assert tokens_per_frame(144, 4, 64) == (6, 36)
    assert tokens_per_frame(144, 9, 64) == (4, 16)
    assert tokens_per_frame(144, 16, 64) == (3, 9)
    assert tokens_per_frame(10, 16, 64) == (1, 1)  # never below one token


def test_downsample_pool_shape_and_weights():
    assert pool_shape(16, 8, 8) == (4, 4) and pool_shape(6, 8, 8) in ((2, 3), (3, 2)) and pool_shape(64, 8, 8) == (8, 8)
    h = torch.arange(16, dtype=torch.float32)[:, None]  # 4x4 grid, value = patch index
    pooled, sources = pool_grid(h, 4, 4, (2, 2))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.allclose(sources.sum(1), torch.ones(4)) and sources[0].nonzero().flatten().tolist() == [0, 1, 4, 5]


def test_cls_attention_ranks_the_patches_the_cls_query_matches():
    d, heads = 8, 2
    q = torch.zeros(1, 5, d)
    k = torch.zeros(1, 5, d)
    q[0, 0] = 3.0
    k[0, 3] = 3.0  # patch index 2 (token 3) matches the CLS query in both heads
    att = cls_attention(q, k, heads)
    assert att.shape == (1, 4) and att[0].argmax().item() == 2


@pytest.mark.parametrize("frames, per_frame", [(9, 16), (4, 36)])
def test_dynamic_vlm_on_a_video(random_model_dir, tmp_path, frames, per_frame):
    from backends import media, runner
    from backends.models import load_model
    from backends.settings import Settings
    from backends.types import GenerationSettings, MethodSpec, RunRequest
    from tests.test_video import write_video

    s = Settings()
    m = media.video_media(write_video(tmp_path / "v.avi", n_frames=20), s, frames=frames)
    req = RunRequest(m, "how many shapes are there?", MethodSpec("dynamic_vlm", {"max_tokens": 144}),
                     GenerationSettings(max_new_tokens=2, warmup=0))
    res = runner.run(req, load_model(random_model_dir, s), s)
    assert res.visual_tokens.input == frames * 64 and res.visual_tokens.kept == frames * per_frame
    assert len(res.kept_map) == frames and res.info["tokens_per_frame"] == per_frame


def test_downsample_budget_without_an_exact_layout():
    assert pool_shape(73, 27, 27) in ((8, 9), (9, 8))  # 73 is prime: the nearest count with a layout, 72
    assert pool_shape(182, 27, 27) in ((13, 14), (14, 13)) and pool_shape(7, 8, 8) in ((1, 7), (7, 1))
