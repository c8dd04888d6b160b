"""The working state of one run, shared by the runner and the method applied to it.

The runner fills it stage by stage (vision states, then the LLM sequence); a method edits it at its seam:
a pre-LLM method replaces `frames[i]` (fewer or merged tokens), an in-LLM method records per-layer counts
and stage maps. Everything a result reports about the visual tokens is derived from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from backends.adapter import LlavaAdapter

Positions = Literal["reindex", "original"]


@dataclass
class FrameTokens:
    """The visual tokens of one image/frame on their way to the LLM.

    hidden:  [n, D_vision] vision states (before the projector) of the n tokens that will enter the LLM
    sources: [n, N] (CPU) coefficient of each original patch (raster order over the rows x cols grid) in
             each token: a kept patch is a one-hot row, a merged or pooled token spreads its weight over the
             patches it absorbed
    index:   [n] the original patch index each token stands for (its RoPE slot when positions are "original")
    """

    hidden: torch.Tensor
    sources: torch.Tensor
    index: torch.Tensor

    @staticmethod
    def full(hidden: torch.Tensor) -> FrameTokens:
        n = hidden.shape[0]
        return FrameTokens(hidden, torch.eye(n, dtype=torch.float32), torch.arange(n))

    def select(self, keep: torch.Tensor) -> FrameTokens:
        """Keep tokens `keep` (LongTensor of row indices, in the order they should enter the LLM)."""
        cpu = keep.cpu()  # sources and index stay on the CPU (bookkeeping); hidden stays on the model's device
        return FrameTokens(self.hidden[keep.to(self.hidden.device)], self.sources[cpu], self.index[cpu])

    def kept_map(self) -> torch.Tensor:
        """[N] share of each patch that reaches the LLM, in 0..1."""
        return self.sources.sum(0).clamp(0, 1)


@dataclass
class RunState:
    adapter: LlavaAdapter
    input_ids: torch.Tensor  # [1, L] as the processor made it (N image tokens per frame)
    pixel_values: torch.Tensor  # [F, 3, H, W]
    prompt_text: str
    seed: int = 0
    frames: list[FrameTokens] = field(default_factory=list)
    positions: Positions = "reindex"  # RoPE positions of kept visual tokens: contiguous, or their original slots
    per_layer: list[int] | None = None  # visual tokens per decoder layer (None: every layer sees all kept ones)
    per_layer_at: str = "prefill"  # "decode": per_layer counts the visual KV decoding reads (prefill saw them all)
    stage_maps: list[list[torch.Tensor]] = field(default_factory=list)  # per stage: per frame [N] weights
    info: dict[str, Any] = field(default_factory=dict)
    vision_states: list[torch.Tensor] = field(default_factory=list)  # [i] = input of vision layer i, [F, T, Dv]
    # Filled by the runner when it builds the LLM sequence:
    visual_slots: torch.Tensor | None = None  # [V] sequence indices of the visual tokens entering the LLM
    seq_len: int = 0  # LLM prompt length after reduction
    next_position: int = 0  # position id of the first generated token
    # Conversations (backends/turns.py): KV-cache methods read these from their hooks.
    cache: Any = None  # the run's transformers Cache, created before the first prefill and carried across turns
    turn: int = 0  # 0: the first question (the multimodal prefill); k: the k-th follow-up
    query: torch.Tensor | None = None  # rows of the current prefill that are this turn's question tokens

    def encode_vision(self) -> None:
        """Default vision stage: run the tower to the feature layer, one `FrameTokens` per frame, all kept."""
        self.vision_states, hidden = self.adapter.encode(self.pixel_values)  # every encoder's tokens, in slot order
        self.frames = [FrameTokens.full(h) for h in hidden]

    @property
    def grid(self) -> tuple[int, int]:
        return self.adapter.grid

    @property
    def visual_in(self) -> int:
        return self.pixel_values.shape[0] * self.adapter.tokens_per_image

    @property
    def visual_kept(self) -> int:
        return sum(f.hidden.shape[0] for f in self.frames)

    def kept_maps(self) -> list[list[list[float]]]:
        """Per frame, the share of each patch that reaches the LLM's last layer (after the last in-LLM stage)."""
        maps = self.stage_maps[-1] if self.stage_maps else [f.kept_map() for f in self.frames]
        return [self.adapter.map_rows(m) for m in maps]
