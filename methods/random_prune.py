"""`random`: keep a seeded random subset of each frame's visual tokens (the control every method must beat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from backends.state import RunState
from methods._util import budget
from methods.base import Method
from methods.registry import register


@register
@dataclass
class RandomPrune(Method):
    name = "random"
    stage = "before_llm"
    paper = "control (UniPruneBench: random is a strong baseline)"
    summary = "Keeps round(keep x N) visual tokens per frame, drawn uniformly at random with a fixed seed."
    needs = "nothing"
    budget_field = "keep"
    rope = "parameter `positions`: re-indexed (default) or original"

    keep: float = 0.25  # share of each frame's visual tokens that reach the LLM
    seed: int = 0
    positions: Literal["reindex", "original"] = "reindex"  # RoPE slots of kept tokens: contiguous or original

    def reduce(self, state: RunState) -> None:
        state.positions = self.positions
        for i, frame in enumerate(state.frames):
            n = frame.hidden.shape[0]
            g = torch.Generator().manual_seed(self.seed * 1000 + i)
            keep = torch.randperm(n, generator=g)[: budget(self.keep, n)].sort().values  # raster order
            state.frames[i] = frame.select(keep.to(frame.hidden.device))
