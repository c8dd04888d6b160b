"""Base class of every method: a typed dataclass applied to a run as a context manager.

A method subclass declares its paper facts as class attributes and its parameters as dataclass fields
with the paper's defaults, validated in `__post_init__`. The runner calls, in order:

    with method.apply(state):      # install hooks on the model's seams; always removed on exit
        method.encode(state)       # vision tower -> state.frames (a method may merge inside the tower)
        method.reduce(state)       # before the LLM: edit state.frames (drop / merge / pool tokens)
        ... prefill and decode run here, with the hooks live ...

The baseline is simply a method that does neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from backends.state import RunState
from backends.types import RequestError

STAGES = {
    "baseline": "Baseline",
    "before_llm": "Before the LLM",
    "in_llm": "Inside the LLM",
    "kv_cache": "KV cache and decode",
    "architecture": "A trained variant of the model",
}


@dataclass
class Method:
    name: ClassVar[str] = ""
    stage: ClassVar[str] = "baseline"
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs: ClassVar[str] = ""  # what the method needs from the model (CLS token, attention scores, ...)
    fidelity: ClassVar[str] = "faithful"  # or "training-free approximation", with why in `summary`
    budget_field: ClassVar[str | None] = None  # the field --keep sets (a share of the visual tokens)
    rope: ClassVar[str] = "re-indexed (contiguous)"  # RoPE positions the kept visual tokens get
    keep_all: ClassVar[dict | None] = None  # params that pass every token through unchanged (None: keep = 1.0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `RequestError` for an out-of-range parameter (subclasses extend)."""
        if self.budget_field is not None:
            keep = getattr(self, self.budget_field)
            if not 0.0 < float(keep) <= 1.0:
                raise RequestError(f"{self.name}: {self.budget_field} must be in (0, 1], got {keep}")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        """Install hooks for the duration of the run; the default installs none."""
        yield

    def encode(self, state: RunState) -> None:
        """Vision stage; the default runs the tower unchanged (see `RunState.encode_vision`)."""
        state.encode_vision()

    def reduce(self, state: RunState) -> None:
        """Edit `state.frames` before the projector and the LLM; the default keeps every token."""

    @classmethod
    def keep_all_params(cls) -> dict[str, Any]:
        """The method's "keep everything" setting: the test matrix checks it reproduces the baseline exactly."""
        if cls.keep_all is not None:
            return dict(cls.keep_all)
        return {cls.budget_field: 1.0} if cls.budget_field else {}

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
