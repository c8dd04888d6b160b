"""`dynamic_vlm` (Dynamic-VLM, ICCV 2025 budget rule): per-frame adaptive pooling to fit a token budget.

Rule (official code, dynamic_spatial_pooling.py): with T frames and a total budget N_max,
M = min(floor(N_max / T), N), side = max(1, floor(sqrt(M))), each frame average-pooled to side x side.
Tokens per frame shrink as frames grow only under an absolute budget: `max_tokens` (the paper's N_max,
e.g. 12K). Our default derives N_max = round(keep x T x N) from the app's keep share, which gives every
frame the same ~keep x N tokens at any frame count: a fixed share, not the paper's dynamic rule.
Dynamic-VLM trains its LLM for variable token counts. On a model whose config says so
(`dynamic_vlm_trained: true`, as the built-in v2 model) this is the paper's recipe; on any other model it
is "Dynamic-VLM-style", a training-free approximation. Each result's `info["fidelity"]` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.state import FrameTokens, RunState
from backends.types import RequestError
from methods._util import pool_grid
from methods.base import Method
from methods.registry import register

PAPER = "the paper's recipe"
APPROX = "a training-free approximation (the paper trains its LLM for variable token counts)"


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
    summary = ("Pools every frame to side x side so all frames fit one token budget. Tokens per frame shrink as "
               "frames grow only with max_tokens (the paper's absolute N_max); our default budget, keep x all "
               "tokens, is a fixed share per frame.")
    needs = "a square patch grid"
    fidelity = (f"{PAPER} on a model trained for variable per-frame token counts (config dynamic_vlm_trained); "
                f"else {APPROX}. Default budget ours: keep x all tokens (max_tokens sets the paper's N_max)")
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
        trained = bool(getattr(state.adapter.model.config, "dynamic_vlm_trained", False))
        state.info.update(budget_tokens=n_max, frames=t, side=side, tokens_per_frame=per,
                          budget_rule="absolute N_max (max_tokens): fewer tokens per frame as frames grow"
                          if self.max_tokens else "ours: keep x all tokens, the same share per frame",
                          fidelity=f"{PAPER} (this model is trained for variable token counts)" if trained
                          else APPROX)
        for i, frame in enumerate(state.frames):
            pooled, sources = pool_grid(frame.hidden, rows, cols, (side, side))
            state.frames[i] = FrameTokens(pooled, sources, sources.argmax(1))
