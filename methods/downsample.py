"""`downsample`: average-pool the patch grid to the budget (plain image downsampling at the same budget)."""

from __future__ import annotations

from dataclasses import dataclass

from backends.state import FrameTokens, RunState
from methods._util import budget, pool_grid, pool_shape
from methods.base import Method
from methods.registry import register


@register
@dataclass
class Downsample(Method):
    name = "downsample"
    stage = "before_llm"
    paper = "control (VTC-Bench: downsampling beats many methods)"
    summary = ("Average-pools each frame's vision features from the rows x cols patch grid to an r x c grid with "
               "r*c = round(keep x N) cells (the nearest count when that has no r x c layout), aspect closest "
               "to the original.")
    needs = "nothing"
    budget_field = "keep"

    keep: float = 0.25

    def reduce(self, state: RunState) -> None:
        rows, cols = state.grid
        shape = pool_shape(budget(self.keep, rows * cols), rows, cols)
        state.info["pooled_grid"] = list(shape)
        for i, frame in enumerate(state.frames):
            pooled, sources = pool_grid(frame.hidden, rows, cols, shape)
            state.frames[i] = FrameTokens(pooled, sources, sources.argmax(1))
