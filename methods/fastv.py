"""`fastv` (FastV, ECCV 2024): drop visual tokens at decoder layer K by the last token's attention.

Rule (official code, pkunlp-icler/FastV `modeling_llama.py` and its lmms-eval KV-cache variant): take layer
K-1's attention as the model computes it (RoPE, causal softmax over ALL keys), average the heads, and read
the image columns of the last prompt row; keep the top int(keep x N) from layer K on, at their original
positions. Because the softmax runs over every key, a head counts in proportion to how much of its attention
lands on the image. `score="feather_baseline"` is FEATHER's re-implementation instead (softmax over the
visual keys only, then the head mean), the FastV that FEATHER's comparison uses; the two kept sets differ.
FastV is the control FEATHER corrects: RoPE's long-range decay biases the score towards the last image rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

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
    summary = ("Keeps the visual tokens the last prompt token attends to most at layer K-1 (the model's own "
               "attention row, RoPE, head mean), from layer K on.")
    needs = "q/k projections of one decoder layer (recomputed: the model keeps sdpa)"
    fidelity = "faithful (official score; score=feather_baseline: FEATHER's re-implementation, as its comparison)"
    budget_field = "keep"
    rope = "original (tokens keep their position ids)"

    keep: float = 0.5  # share of visual tokens kept from layer K on (FastV's R = 50%)
    layer: int = 2  # K
    # "fastv": the official score (softmax over all keys); "feather_baseline": FEATHER's (over visual keys only)
    score: Literal["fastv", "feather_baseline"] = "fastv"

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
            score = ad.last_token_scores(layer, hidden, pos, vis, rope=True, causal=self.score == "fastv")  # [V]
            return topk_rows(score, int(self.keep * vis.numel()))

        state.info.update(layers=[self.layer], score=self.score)
        with PrefillDrop(state, [self.layer], select).installed():
            yield
