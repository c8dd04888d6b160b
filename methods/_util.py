"""Helpers shared by several methods: budgets, recomputed vision attention, grid pooling.

Attention scores are recomputed from a layer's own q/k projections, so the model itself keeps running its
fast attention kernel (sdpa) and never needs eager attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def budget(keep: float, n: int) -> int:
    """Tokens kept out of n at share `keep`: round(keep * n), at least one."""
    return max(1, min(n, round(keep * n)))


def cls_row(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-mean attention of the CLS query (position 0) over every token, CLS included.

    q, k: [F, T, D]. Returns [F, T] (rows sum to 1).
    """
    f, t, d = q.shape
    qh = q[:, :1].reshape(f, 1, heads, d // heads).transpose(1, 2)  # [F, H, 1, d]
    kh = k.reshape(f, t, heads, d // heads).transpose(1, 2)  # [F, H, T, d]
    att = torch.softmax((qh @ kh.transpose(-1, -2)).float() * (d // heads) ** -0.5, dim=-1)  # [F, H, 1, T]
    return att[:, :, 0].mean(1)


def cls_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-mean attention of the CLS query over the patches (positions 1..): [F, N]."""
    return cls_row(q, k, heads)[:, 1:]


def received_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-mean attention each token receives from all queries (for towers without CLS). [F, T]."""
    f, t, d = q.shape
    qh = q.reshape(f, t, heads, d // heads).transpose(1, 2)
    kh = k.reshape(f, t, heads, d // heads).transpose(1, 2)
    att = torch.softmax((qh @ kh.transpose(-1, -2)).float() * (d // heads) ** -0.5, dim=-1)  # [F, H, T, T]
    return att.mean(2).mean(1)


def pool_shape(k: int, rows: int, cols: int) -> tuple[int, int]:
    """The r x c grid (r <= rows, c <= cols) for a budget of k cells: exactly k cells when k factors within the
    grid, else the nearest count (73 on a 27x27 grid has no such layout: 72 = 8 x 9); ties go to the aspect
    closest to rows x cols."""
    target = math.log(rows / cols)
    best = min(((abs(r * c - k), abs(math.log(r / c) - target), r, c)
                for r in range(1, rows + 1) for c in range(1, cols + 1)), key=lambda t: (t[0], t[1]))
    return best[2], best[3]


def pool_grid(hidden: torch.Tensor, rows: int, cols: int, out: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool [N, D] tokens laid out rows x cols to out=(r, c) cells.

    Returns pooled [r*c, D] and sources [r*c, N]: the coefficient of each patch in each pooled token
    (pooling the identity matrix gives exactly the weights adaptive_avg_pool2d uses).
    """
    n, d = hidden.shape
    grid = hidden.T.reshape(1, d, rows, cols)
    pooled = F.adaptive_avg_pool2d(grid, out).reshape(d, -1).T
    eye = torch.eye(n, dtype=torch.float32).reshape(n, 1, rows, cols)
    sources = F.adaptive_avg_pool2d(eye, out).reshape(n, -1).T
    return pooled.contiguous(), sources.contiguous()
