"""`folder` (FOLDER, ICCV 2025): bipartite token merging inside the vision layer that makes LLaVA's features.

Rule (official code, llava/model/folder/patch/folder.py + merge.py), applied in the feature layer (layer 22
of LLaVA-1.5's 24) after the attention residual and before the MLP:
  split tokens alternately into A (even) and B (odd); metric = head-mean keys, L2-normalised;
  score(a, b) = cos(a, b) - alpha * 100 * cls_attn(a); CLS is never merged;
  each a links to its best b, the r best edges merge: tokens and keys by size-weighted mean (sizes tracked),
  CLS attention by a plain mean over the b and the a's it absorbs (scatter_reduce "mean");
  if r exceeds floor((T - 1) / 2) the matching repeats ("fold", 577 -> 289 -> 193 at r = 16 x 24 = 384);
  no merging below 40 tokens; output order [unmerged A, B], positions contiguous.
Adapted to the grid (said in `fidelity`): the protection weight 100 is sized for 577 tokens, where CLS
attention averages 1/577 and the mean term alpha x 100 / 577 ~ 0.9 sits beside cosines <= 1; on T tokens the
weight is 100 x T / 577 so the term keeps that size (on 65 tokens an unscaled term would be ~7.7 and decide
every match). The 40-token floor is scaled the same way. Default keep 1/3: 192 of 576, as r = 16.
The layer is recomputed here with the model's own submodules, so keep = 1.0 is bit-identical to the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backends.state import FrameTokens, RunState
from backends.types import RequestError
from methods._util import budget, cls_row
from methods.base import Method
from methods.registry import register


def bipartite_merge(x, size, members, metric, cls_attn, r: int, alpha: float, protect_first: bool = True,
                    weight: float = 100.0):
    """One matching pass removing r tokens.

    x [T, D] tokens, size [T] tokens absorbed, members [T, T0] 0/1 which original tokens each one holds,
    metric [T, d] keys, cls_attn [T]; `weight` scales the protection term (the code's 100, for 577 tokens).
    Returns the same four plus cls_attn, with T - r rows, order [unmerged A, B].
    """
    m = F.normalize(metric.float(), dim=-1)
    scores = m[0::2] @ m[1::2].T - alpha * weight * cls_attn[0::2].float().unsqueeze(-1)
    if protect_first:
        scores[0] = -math.inf  # the CLS token never merges
    best, best_b = scores.max(-1)
    order = best.argsort(descending=True, stable=True)
    src, unm = order[:r], order[r:].sort().values
    dst = best_b[src]

    def combine(t: torch.Tensor, weighted: bool) -> torch.Tensor:
        """Scatter-add each src row of A into its dst row of B (size-weighted when `weighted`)."""
        a, b = t[0::2], t[1::2].clone()
        if weighted:
            a, b = a * size[0::2, None].to(t.dtype), b * size[1::2, None].to(t.dtype)
        b.index_add_(0, dst, a[src])
        return torch.cat([t[0::2][unm], b])

    new_size = combine(size[:, None].float(), False)[:, 0]
    x_new = combine(x, True)
    x_new[len(unm):] = x_new[len(unm):] / new_size[len(unm):, None].to(x.dtype)
    metric_new = combine(metric, True)
    metric_new[len(unm):] = metric_new[len(unm):] / new_size[len(unm):, None].to(metric.dtype)
    # CLS attention: the plain mean of each b and the a's merged into it (scatter_reduce "mean", b included)
    moved = cls_attn[0::2][src]
    b_cls = cls_attn[1::2].clone().index_add_(0, dst, moved)
    count = torch.ones_like(b_cls).index_add_(0, dst, torch.ones_like(moved))
    cls_new = torch.cat([cls_attn[0::2][unm], b_cls / count])
    return x_new, new_size, combine(members, False), metric_new, cls_new


def fold(x, metric, cls_attn, remove: int, alpha: float, weight: float, floor: int):
    """Remove `remove` tokens by repeated matching passes (each at most floor((T - 1) / 2)), none below `floor`.

    x [T, D], metric [T, d], cls_attn [T]. Returns x [T', D], members [T', T] and the length after each pass.
    """
    t = x.shape[0]
    size, members, lengths = torch.ones(t, device=x.device), torch.eye(t, device=x.device), []
    while remove > 0 and x.shape[0] >= floor:
        r = min((x.shape[0] - 1) // 2, remove)
        x, size, members, metric, cls_attn = bipartite_merge(x, size, members, metric, cls_attn, r, alpha,
                                                             weight=weight)
        remove -= r
        lengths.append(x.shape[0])
    return x, members, lengths


@register
@dataclass
class Folder(Method):
    name = "folder"
    stage = "before_llm"
    paper = "FOLDER (ICCV 2025)"
    summary = ("Merges similar tokens (bipartite matching on keys, CLS-attention protected) inside the vision "
               "layer that produces LLaVA's features, folding repeatedly until the budget is met.")
    needs = "a CLS token (for the protection term) and keys of the feature layer"
    budget_field = "keep"
    rope = "re-indexed, order [unmerged A, B] as the official code"
    fidelity = ("faithful on 577 tokens; on other grids the protection weight (100, for 577 tokens) and the "
                "40-token merge floor are scaled by T / 577")

    keep: float = 1 / 3  # 192 of 576 kept on LLaVA-1.5 (r = 16 x 24 layers = 384 removed)
    alpha: float = 5.0  # weight of the CLS-attention protection term (LLaVA config)

    def encode(self, state: RunState) -> None:
        ad = state.adapter
        if ad.num_prefix_tokens != 1:
            raise RequestError(f"{self.name} needs a CLS token; this model's vision tower has none")
        li = ad.feature_depth - 1
        states = ad.vision_forward(state.pixel_values, stop=li)
        layer, x = ad.vision_layers[li], states[-1]  # input of the feature layer: [F, T, D]
        h = layer.layer_norm1(x)
        attn, _ = layer.self_attn(h, None)
        x = x + attn
        f, t, d = x.shape
        heads = ad.vision_heads
        q, k = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)
        cls = cls_row(q, k, heads)  # [F, T]
        metric = k.reshape(f, t, heads, d // heads).mean(2)  # head-mean keys [F, T, d]
        n = t - 1
        remove = n - budget(self.keep, n)
        floor = math.ceil(40 * t / 577)  # the official "no merging below 40 tokens", scaled to this grid
        weight = 100 * t / 577  # the protection term's 100 is sized for 577 tokens: keep its mean size
        state.info.update(merge_layer=li, removed=remove, floor_tokens=floor, protect_weight=round(weight, 3),
                          passes=[])
        frames, out = [], []
        for i in range(f):
            xi, members, lengths = fold(x[i], metric[i], cls[i], remove, self.alpha, weight, floor)
            state.info["passes"].append(len(lengths))
            out.append(xi)
            coef = members / members.sum(1, keepdim=True)  # a merged token is the mean of its originals
            frames.append((coef[1:, 1:].cpu(), coef[1:, 1:].argmax(1).cpu()))  # bookkeeping stays on the CPU
        x = torch.stack(out) if len({o.shape[0] for o in out}) == 1 else None
        if x is None:
            raise RuntimeError("frames merged to different lengths")
        x = x + layer.mlp(layer.layer_norm2(x))
        state.vision_states = states + [x]
        state.frames = [FrameTokens(x[i, 1:], c, idx) for i, (c, idx) in enumerate(frames)]
