"""The baseline: the model as shipped, every visual token to every layer."""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method
from methods.registry import register


@register
@dataclass
class Baseline(Method):
    name = "baseline"
    stage = "baseline"
    paper = "-"
    summary = "The unmodified model: all visual tokens reach every decoder layer."
    needs = "nothing"
    rope = "original (nothing removed)"
