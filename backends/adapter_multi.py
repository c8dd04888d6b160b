"""Adapter of the two-encoder built-in model (`llava_2enc`, backends/tiny/two_encoder.py).

Importing this module registers the model class with transformers' Auto classes and this adapter with
`adapter_for`. Each image's visual tokens are the CLIP tower's 8x8 patches (slots 0..63) then the conv encoder's
6x6 (slots 64..99); both encoders' states share one width, so a run's token list carries both and the slot of a
token picks its projector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backends.adapter import ADAPTERS, EncoderSpan, LlavaAdapter
from backends.tiny.two_encoder import MODEL_TYPE


@dataclass
class TwoEncoderAdapter(LlavaAdapter):
    model_type = MODEL_TYPE

    def __post_init__(self) -> None:
        super().__post_init__()
        side = self.model.config.conv_spec().side
        clip = self.encoders[0]
        self.encoders = [clip, EncoderSpan("conv", (side, side), clip.size)]

    @property
    def conv_tower(self) -> torch.nn.Module:
        return self.model.model.conv_tower

    @property
    def conv_projector(self) -> torch.nn.Module:
        return self.model.model.conv_projector

    @property
    def encoder_ranks(self) -> list[float] | None:
        """Feature rank of each encoder, measured on calibration images and stored in the config (or None)."""
        return self.model.config.encoder_ranks

    def conv_forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage conv states [F, C_s, h_s, w_s] (see ConvEncoder.forward)."""
        return self.conv_tower(pixel_values.to(self.conv_tower.stem.weight.dtype))

    def conv_tokens(self, last: torch.Tensor) -> torch.Tensor:
        """Last conv stage [F, C, side, side] -> the tokens its projector reads [F, side * side, Dv]."""
        return self.conv_tower.tokens(last)

    def encode(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(CLIP tower states, tokens [F, 64 + 36, Dv]: CLIP's patches then the conv encoder's)."""
        states = self.tower_forward(pixel_values)
        conv = self.conv_tokens(self.conv_forward(pixel_values)[-1])
        return states, torch.cat([states[-1][:, self.num_prefix_tokens:], conv.to(states[-1].dtype)], 1)

    def project_tokens(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """hidden [V, Dv], index [V] slots -> [V, D]: slots of the conv encoder take its projector."""
        conv = index.to(hidden.device) >= self.encoders[1].offset
        out = hidden.new_empty(hidden.shape[0], self.text_config.hidden_size)
        out[~conv] = self.projector(hidden[~conv])
        out[conv] = self.conv_projector(hidden[conv])
        return out


ADAPTERS[TwoEncoderAdapter.model_type] = TwoEncoderAdapter
