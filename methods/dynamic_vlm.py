"""`dynamic_vlm` (Dynamic-VLM, ICCV 2025 budget rule): per-frame adaptive pooling to fit a token budget.

Rule (official code, dynamic_spatial_pooling.py): with T frames and a total budget N_max,
M = min(floor(N_max / T), N), side = max(1, floor(sqrt(M))), each frame average-pooled to side x side.
So tokens per frame shrink as frames grow. N_max = round(keep x T x N) unless `max_tokens` sets it
absolutely (the paper's N_max, e.g. 12K). Dynamic-VLM trains its LLM for variable token counts; applied
to a model not trained for it this is "Dynamic-VLM-style", a training-free approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.state import FrameTokens, RunState
from backends.types import RequestError
from methods._util import pool_grid
from methods.base import Method
from methods.registry import register


def tokens_per_frame(n_max: int, frames: int, n: int) -> tuple[int, int]:
    """(side, side**2) for one frame of n tokens when `frames` frames share n_max tokens."""
    m = min(n_max // frames, n)
    side = max(1, math.isqrt(m))
    return side, side * side


@register
@dataclass
class DynamicVLM(Method):
    name = "dynamic_vlm"
    stage = "before_llm"
    paper = "Dynamic-VLM (ICCV 2025), budget rule"
    summary = ("Dynamic-VLM-style: pools every frame to side x side so all frames fit one token budget; "
               "tokens per frame shrink as frames grow.")
    needs = "a square patch grid"
    fidelity = "training-free approximation (the paper trains its LLM for variable token counts)"
    budget_field = "keep"

    keep: float = 0.25  # N_max = round(keep x all visual tokens), unless max_tokens is set
    max_tokens: int = 0  # absolute budget N_max over all frames (0: derive it from keep)

    def validate(self) -> None:
        super().validate()
        if self.max_tokens < 0:
            raise RequestError(f"{self.name}: max_tokens must be >= 0")

    def reduce(self, state: RunState) -> None:
        rows, cols = state.grid
        if rows != cols:
            raise RequestError(f"{self.name} needs a square patch grid, got {rows}x{cols}")
        t, n = len(state.frames), rows * cols
        n_max = self.max_tokens or round(self.keep * t * n)
        side, per = tokens_per_frame(n_max, t, n)
        state.info.update(budget_tokens=n_max, frames=t, side=side, tokens_per_frame=per)
        for i, frame in enumerate(state.frames):
            pooled, sources = pool_grid(frame.hidden, rows, cols, (side, side))
            state.frames[i] = FrameTokens(pooled, sources, sources.argmax(1))
