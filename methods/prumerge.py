"""`prumerge` and `prumerge_plus` (LLaVA-PruMerge, ICCV 2025): CLS-attention outliers, key-similarity merge.

Rule (official code, clip_encoder.py):
  a = softmax(q k^T / sqrt(C))[CLS, patches] with q, k of the vision layer after the one LLaVA reads its
      features from (layer 23 of 24 in LLaVA-1.5, whose input is those features), full width, heads not split;
      on a model whose feature layer is the tower's last (the built-in one) there is no later layer, so q, k
      are the last layer's, computed from its input;
  keep the n patches with a > Q3 + 1.5 IQR (the IQR outliers), in descending score order;
  each kept token i += sum_j a_j x_j over its most key-similar other tokens (kept or pruned), unnormalised:
      32 of LLaVA's 576 patches in the code, scaled here to the grid (round(32 N / 576), 4 of 64) unless set;
  one extra token sum_{pruned} a_j x_j is appended.
PruMerge+ first adds spatially uniform patches to the kept set: the code's 1-D sequence with stride
int(int(1/ratio)/3) over the patches (ratio = n / N), about 3n of them, so ~25% of LLaVA's 576 in total.
When outliers exceed N/6 (as on small grids) that stride collapses to 1 and keeps everything; so the extras
are capped at the paper's operating point, round(N/4) - n, and then placed by farthest-point sampling on the
grid (each the patch farthest from every token already kept). Below the cap the code's sequence is used as is.
Positions are contiguous (the LLM sees a new, shorter sequence), as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from backends.state import FrameTokens, RunState
from backends.types import RequestError
from methods.base import Method
from methods.registry import register


def iqr_outliers(a: torch.Tensor, factor: float = 1.5) -> torch.Tensor:
    """Indices of a [N] above Q3 + factor * IQR (numpy-style linear quantiles), by descending score."""
    q1, q3 = torch.quantile(a.float(), torch.tensor([0.25, 0.75], device=a.device)).tolist()
    idx = (a > q3 + factor * (q3 - q1)).nonzero().flatten()
    return idx[a[idx].argsort(descending=True, stable=True)]


def uniform_extras(kept: torch.Tensor, n: int) -> torch.Tensor:
    """The official PruMerge+ sequence: every int(int(1/ratio)/3)-th patch (ratio = kept / n) not already kept.
    The code writes arange(0, 575, step) for LLaVA's 576 patches; here arange(0, n - 1, step)."""
    ratio = max(kept.numel(), 1) / n
    stride = max(1, int(int(1 / ratio) / 3))
    seq = torch.arange(0, n - 1, stride)
    return seq[~torch.isin(seq, kept)]


def farthest_points(taken: torch.Tensor, count: int, rows: int, cols: int) -> torch.Tensor:
    """`count` patches of a rows x cols grid, each in turn the one farthest (Euclidean, in patches) from every
    patch in `taken` and those already picked; ties go to the lowest raster index. Returns them in raster order."""
    yx = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2).float()
    dist = torch.cdist(yx, yx[taken]).min(1).values if taken.numel() else torch.full((rows * cols,), torch.inf)
    picks = []
    for _ in range(count):
        i = int(dist.argmax())  # the first maximum: lowest raster index on ties
        picks.append(i)
        dist = torch.minimum(dist, (yx - yx[i]).norm(dim=1))
    return torch.tensor(sorted(picks), dtype=torch.long)


def plus_extras(kept: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, str]:
    """PruMerge+'s extra patches for outliers `kept` [n] on a rows x cols grid, and which rule chose them:
    the code's sequence when it keeps the total within round(N/4) (LLaVA's operating point), else
    round(N/4) - n farthest-point patches."""
    n = rows * cols
    official = uniform_extras(kept, n)
    cap = max(0, round(n / 4) - kept.numel())
    if official.numel() <= cap:
        return official, f"official stride ({official.numel()} extras)"
    return farthest_points(kept, cap, rows, cols), (
        f"capped: the official stride would add {official.numel()} extras ({kept.numel() + official.numel()} of "
        f"{n}); {cap} farthest-point extras keep about 25%")


def merge_into(x: torch.Tensor, keys: torch.Tensor, a: torch.Tensor, kept: torch.Tensor, neighbors: int):
    """Add to each kept token the a-weighted sum of its most key-similar other tokens.

    x, keys: [N, C]; a: [N]; kept: [n]. Returns merged [n, C] and coefficients [n, N].
    """
    kn = F.normalize(keys.float(), dim=-1)
    sim = kn[kept] @ kn.T  # [n, N]
    sim[torch.arange(kept.numel(), device=kept.device), kept] = -torch.inf  # never merge a token with itself
    k = min(neighbors, x.shape[0] - 1)
    nb = sim.topk(k, dim=1).indices  # [n, k]
    w = a[nb].to(x.dtype)  # [n, k]
    merged = x[kept] + (w.unsqueeze(-1) * x[nb]).sum(1)
    coef = torch.zeros(kept.numel(), x.shape[0])
    coef[torch.arange(kept.numel()), kept.cpu()] = 1.0
    coef.scatter_add_(1, nb.cpu(), w.float().cpu())
    return merged, coef


@register
@dataclass
class PruMerge(Method):
    name = "prumerge"
    stage = "before_llm"
    paper = "LLaVA-PruMerge (ICCV 2025)"
    summary = ("Adaptive: keeps the CLS-attention IQR outliers of the vision tower, merges their most key-similar "
               "tokens into them (32 of 576 in the code, scaled to the grid), and adds one token summarising the "
               "pruned ones.")
    needs = "a CLS token in the vision tower"
    rope = "re-indexed, order by CLS attention, then extras, then the summary token"
    fidelity = ("faithful (32 merge neighbours of 576 scaled to the grid; on a tower whose last layer makes the "
                "features, q/k come from that layer's input)")
    keep_all = {"iqr_factor": -1e6, "merge": False, "order": "raster"}  # every patch an "outlier", no merge
    plus = False

    iqr_factor: float = 1.5  # outlier threshold Q3 + iqr_factor * IQR
    neighbors: int = -1  # tokens merged into each kept one; -1: the code's 32 of 576, scaled to the grid
    merge: bool = True  # False: prune only (no merge, no extra token)
    order: Literal["score", "raster"] = "score"  # LLM input order: by CLS attention (official) or image order

    def validate(self) -> None:
        super().validate()
        if self.neighbors < 1 and self.neighbors != -1:
            raise RequestError(f"{self.name}: neighbors must be >= 1, or -1 (scaled to the grid)")

    def _layer(self, state: RunState) -> int:
        ad = state.adapter
        if ad.num_prefix_tokens != 1:
            raise RequestError(f"{self.name} needs a CLS token; this model's vision tower has none")
        return min(ad.feature_depth, len(ad.vision_layers) - 1)

    def reduce(self, state: RunState) -> None:
        ad = state.adapter
        layer = self._layer(state)
        q, k = ad.vision_qk(layer, state.vision_states[layer])  # [F, 1 + N, C]
        c = q.shape[-1]
        att = torch.softmax((q @ k.transpose(-1, -2)).float() * c**-0.5, dim=-1)[:, 0, 1:]  # [F, N]
        rows, cols = state.grid
        neighbors = self.neighbors if self.neighbors > 0 else max(1, round(32 * rows * cols / 576))
        state.info.update(score_layer=layer, neighbors=neighbors, outliers=[], selected=[])
        if layer == ad.feature_depth - 1:  # no layer after the features: score with the last one's own input
            state.info["score_note"] = f"q/k of layer {layer} from its input (the features are that layer's output)"
        if self.plus:
            state.info["extras_rule"] = []
        for i, frame in enumerate(state.frames):
            a, n = att[i], frame.hidden.shape[0]
            kept = iqr_outliers(a, self.iqr_factor)
            state.info["outliers"].append(int(kept.numel()))
            if kept.numel() == 0:  # nothing stands out: keep the single most attended patch
                kept = a.argmax().reshape(1)
            if self.plus:
                extras, rule = plus_extras(kept.cpu(), rows, cols)
                kept = torch.cat([kept, extras.to(kept.device)])
                state.info["extras_rule"].append(rule)
            state.info["selected"].append(int(kept.numel()))
            if self.order == "raster":
                kept = kept.sort().values
            pruned = torch.ones(n, dtype=torch.bool, device=kept.device)
            pruned[kept] = False
            if not self.merge:
                state.frames[i] = frame.select(kept)
                continue
            x, a_x = frame.hidden, a.to(frame.hidden.dtype)
            merged, coef = merge_into(x, k[i, 1:], a, kept, neighbors)
            index = kept.cpu()
            if pruned.any():  # the extra token: attention-weighted sum of everything pruned
                extra = (a_x[pruned].unsqueeze(-1) * x[pruned]).sum(0, keepdim=True)
                merged = torch.cat([merged, extra])
                w = torch.where(pruned.cpu(), a.float().cpu(), torch.zeros(n))
                coef = torch.cat([coef, w[None]])
                index = torch.cat([index, w.argmax().reshape(1)])
            state.frames[i] = FrameTokens(merged, coef, index)


@register
@dataclass
class PruMergePlus(PruMerge):
    name = "prumerge_plus"
    paper = "LLaVA-PruMerge+ (ICCV 2025)"
    summary = ("PruMerge plus spatially uniform samples (the code's stride int(int(1/ratio)/3)) added to the "
               "outliers before merging, about 25% of the tokens on LLaVA-1.5; where that stride would keep more "
               "than 25% (outliers over N/6, e.g. small grids) the extras are capped there, spread farthest-point.")
    fidelity = ("adapted: the code's uniform extras, capped at round(N/4) - n and placed farthest-point when "
                "the stride would exceed 25% of N (it collapses to 1 on small grids); neighbours scaled to the grid")
    plus = True
