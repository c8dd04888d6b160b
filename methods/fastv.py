"""`fastv` (FastV, ECCV 2024): drop visual tokens at decoder layer K by the last token's attention.

Rule (official code, the FastV baseline inside FEATHER's repository): at layer K-1, score each visual token by
the head-mean attention the last prompt token pays it, with RoPE as the model applies it (softmax over the
visual keys); keep the top int(keep x N) from layer K on, at their original positions. FastV is the control
that FEATHER corrects: RoPE's long-range decay biases the score towards the last (bottom) image rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backends.state import RunState
from backends.types import RequestError
from methods._llm import PrefillDrop, topk_rows
from methods.base import Method
from methods.registry import register


@register
@dataclass
class FastV(Method):
    name = "fastv"
    stage = "in_llm"
    paper = "FastV (ECCV 2024), the control FEATHER corrects"
    summary = "Keeps the visual tokens the last prompt token attends to most at layer K-1 (with RoPE), from layer K on."
    needs = "q/k projections of one decoder layer (recomputed: the model keeps sdpa)"
    budget_field = "keep"
    rope = "original (tokens keep their position ids)"

    keep: float = 0.5  # share of visual tokens kept from layer K on (FastV's R = 50%)
    layer: int = 2  # K

    def validate(self) -> None:
        super().validate()
        if self.layer < 1:
            raise RequestError(f"{self.name}: layer must be >= 1")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        ad = state.adapter
        if self.layer >= len(ad.layers):
            raise RequestError(f"{self.name}: layer {self.layer} >= the model's {len(ad.layers)} layers")

        def select(stage, layer, hidden, pos, vis):
            score = ad.last_token_scores(layer, hidden, pos, vis, rope=True)  # [V]
            return topk_rows(score, int(self.keep * vis.numel()))

        state.info["layers"] = [self.layer]
        with PrefillDrop(state, [self.layer], select).installed():
            yield
