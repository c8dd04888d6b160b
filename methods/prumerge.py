"""`prumerge` and `prumerge_plus` (LLaVA-PruMerge, ICCV 2025): CLS-attention outliers, key-similarity merge.

Rule (official code, clip_encoder.py):
  a = softmax(q k^T / sqrt(C))[CLS, patches] with q, k from the vision layer that reads LLaVA's features
      (layer 23 of 24 in LLaVA-1.5), full width, heads not split;
  keep the n patches with a > Q3 + 1.5 IQR (the IQR outliers), in descending score order;
  each kept token i += sum_j a_j x_j over its 32 most key-similar other tokens (kept or pruned), unnormalised;
  one extra token sum_{pruned} a_j x_j is appended.
PruMerge+ first adds spatially uniform patches (stride int(int(1/ratio)/3)) to the kept set.
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
    q1, q3 = torch.quantile(a.float(), torch.tensor([0.25, 0.75], dtype=torch.float32)).tolist()
    idx = (a > q3 + factor * (q3 - q1)).nonzero().flatten()
    return idx[a[idx].argsort(descending=True, stable=True)]


def uniform_extras(kept: torch.Tensor, n: int) -> torch.Tensor:
    """PruMerge+'s spatial samples: every int(int(1/ratio)/3)-th patch not already kept."""
    ratio = max(kept.numel(), 1) / n
    stride = max(1, int(int(1 / ratio) / 3))
    seq = torch.arange(0, n - 1, stride)
    return seq[~torch.isin(seq, kept)]


def merge_into(x: torch.Tensor, keys: torch.Tensor, a: torch.Tensor, kept: torch.Tensor, neighbors: int):
    """Add to each kept token the a-weighted sum of its most key-similar other tokens.

    x, keys: [N, C]; a: [N]; kept: [n]. Returns merged [n, C] and coefficients [n, N].
    """
    kn = F.normalize(keys.float(), dim=-1)
    sim = kn[kept] @ kn.T  # [n, N]
    sim[torch.arange(kept.numel()), kept] = -torch.inf  # never merge a token with itself
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
    summary = ("Adaptive: keeps the CLS-attention IQR outliers of the vision tower, merges their 32 most "
               "key-similar tokens into them, and adds one token summarising the pruned ones.")
    needs = "a CLS token in the vision tower"
    rope = "re-indexed, order by CLS attention, then extras, then the summary token"
    keep_all = {"iqr_factor": -1e6, "merge": False, "order": "raster"}  # every patch an "outlier", no merge
    plus = False

    iqr_factor: float = 1.5  # outlier threshold Q3 + iqr_factor * IQR
    neighbors: int = 32  # tokens merged into each kept one (official inference code)
    merge: bool = True  # False: prune only (no merge, no extra token)
    order: Literal["score", "raster"] = "score"  # LLM input order: by CLS attention (official) or image order

    def validate(self) -> None:
        super().validate()
        if self.neighbors < 1:
            raise RequestError(f"{self.name}: neighbors must be >= 1")

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
        state.info.update(score_layer=layer, outliers=[], selected=[])
        for i, frame in enumerate(state.frames):
            a, n = att[i], frame.hidden.shape[0]
            kept = iqr_outliers(a, self.iqr_factor)
            state.info["outliers"].append(int(kept.numel()))
            if kept.numel() == 0:  # nothing stands out: keep the single most attended patch
                kept = a.argmax().reshape(1)
            if self.plus:
                kept = torch.cat([kept, uniform_extras(kept.cpu(), n).to(kept.device)])
            state.info["selected"].append(int(kept.numel()))
            if self.order == "raster":
                kept = kept.sort().values
            pruned = torch.ones(n, dtype=torch.bool, device=kept.device)
            pruned[kept] = False
            if not self.merge:
                state.frames[i] = frame.select(kept)
                continue
            x, a_x = frame.hidden, a.to(frame.hidden.dtype)
            merged, coef = merge_into(x, k[i, 1:], a, kept, self.neighbors)
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
    summary = ("PruMerge plus spatially uniform samples (stride int(int(1/ratio)/3)) added to the outliers "
               "before merging; about 25% of the tokens on LLaVA-1.5.")
    plus = True
