"""`feather` (FEATHER, ICCV 2025): RoPE-free scoring plus a uniform grid, pruning in two stages.

Rule (official code, prismatic llama2_models.py): at layer K-1 apply its input norm and q/k projections and
score the visual keys by the last prompt token's query with NO rotary (softmax over visual keys, head mean),
so the score has no bias towards the image's last rows. Stage 1 (layer K1) keeps the top int(keep x N) plus
every `stride`-th row and column of the patch grid (union); stage 2 (layer K2) keeps the top
int(keep^2 x survivors) of the survivors (the code multiplies the survivor count). Survivors keep their
original position ids. Paper defaults: K = 8 and 16 of LLaMA-2-7B's 32 layers, drop ratio 0.7 (keep 0.3),
stride 3; the layers are scaled to this model's depth unless set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from backends.state import RunState
from backends.types import RequestError
from methods._llm import PrefillDrop, scaled_layer, topk_rows
from methods.base import Method
from methods.registry import register


def uniform_grid(rows: int, cols: int, stride: int) -> torch.Tensor:
    """Raster indices of every `stride`-th row and column (81 of 729 on a 27x27 grid at stride 3)."""
    return torch.arange(rows * cols).reshape(rows, cols)[::stride, ::stride].flatten()


@register
@dataclass
class Feather(Method):
    name = "feather"
    stage = "in_llm"
    paper = "FEATHER (ICCV 2025)"
    summary = ("FastV's fix: scores visual tokens without RoPE (no bottom-row bias) and always keeps a uniform "
               "grid; prunes again at a deeper layer.")
    needs = "q/k projections of two decoder layers (recomputed: the model keeps sdpa)"
    budget_field = "keep"
    rope = "original (tokens keep their position ids)"

    keep: float = 0.3  # 1 - R, with the paper's drop ratio R = 0.7
    stride: int = 3  # uniform grid: every 3rd row and column
    stage1_layer: int = -1  # -1: the paper's layer 8 of 32, scaled to this model
    stage2_layer: int = -1  # -1: the paper's layer 16 of 32, scaled; 0: one stage only

    def validate(self) -> None:
        super().validate()
        if self.stride < 1:
            raise RequestError(f"{self.name}: stride must be >= 1")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        ad = state.adapter
        depth = len(ad.layers)
        k1 = scaled_layer(self.stage1_layer, 8, 32, depth)
        k2 = scaled_layer(self.stage2_layer, 16, 32, depth) if self.stage2_layer != 0 else None
        stages = [k1] if k2 is None or k2 <= k1 else [k1, k2]
        rows, cols = state.grid
        grid = uniform_grid(rows, cols, self.stride)

        def select(stage, layer, hidden, pos, vis):
            score = ad.last_token_scores(layer, hidden, pos, vis, rope=False)  # [V], no rotary
            if stage == 0:
                n = ad.tokens_per_image
                top = topk_rows(score, int(self.keep * vis.numel()))
                # the grid per frame: visual rows of frame f are f*n .. f*n + n - 1 (no pre-LLM reduction)
                frames = vis.numel() // n
                uni = (torch.arange(frames)[:, None] * n + grid[None]).flatten().to(vis.device)
                return torch.unique(torch.cat([top, uni[uni < vis.numel()]]))
            return topk_rows(score, int(self.keep**2 * vis.numel()))

        state.info.update(layers=stages, layers_note=f"paper: 8 and 16 of 32; this model has {depth} layers",
                          uniform_grid=int(grid.numel()))
        with PrefillDrop(state, stages, select).installed():
            yield
