"""`shortv` (ShortV, ICCV 2025): freeze visual tokens in the layers that barely change them.

Rule (official code, llava_llama.py): a one-time calibration ranks the decoder layers by their layer
contribution LC_i = KL(p_mod || p_orig) of the last token's next-token distribution when layer i's updates
to the visual positions are zeroed (`python app.py calibrate-shortv`, stored per model). At run time the
`n_frozen` least contributing layers compute keys/values for every token (text still attends to the image)
but queries, attention rows, output projection and MLP for the text rows only; visual states pass through
unchanged. So the FLOPs really drop. No token is removed, positions are untouched, decoding is unchanged.
Paper: 19 of LLaVA-1.5-7B's 32 layers frozen; scaled here to the model's depth unless set.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from backends.adapter import rotate_half
from backends.state import RunState
from backends.types import RequestError
from methods.base import Method
from methods.registry import register

CALIBRATION_FILE = "shortv_layers.json"


def calibration_path(name_or_path: str) -> Path:
    """Next to the weights for a local model folder; under the cache (VLM_CACHE_DIR) for hub ids."""
    import os

    if name_or_path and Path(name_or_path).is_dir():
        return Path(name_or_path) / CALIBRATION_FILE
    cache = Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm-side-by-side"))
    return cache / "shortv" / (name_or_path.replace("/", "--") + ".json")


def frozen_forward(layer: torch.nn.Module, is_visual: torch.Tensor):
    """A decoder layer's forward in which the rows `is_visual` [T] (bool) pass through unchanged at prefill."""
    original = type(layer).forward

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if hidden_states.shape[1] != is_visual.numel():  # decode steps (and anything else) run as usual
            return original(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        attn, t = self.self_attn, hidden_states.shape[1]
        text = (~is_visual).nonzero().flatten().to(hidden_states.device)
        d = attn.head_dim
        x = self.input_layernorm(hidden_states)
        cos, sin = position_embeddings
        q = attn.q_proj(x[:, text]).view(1, len(text), -1, d).transpose(1, 2)
        k = attn.k_proj(x).view(1, t, -1, d).transpose(1, 2)
        v = attn.v_proj(x).view(1, t, -1, d).transpose(1, 2)
        q = q * cos[:, text].unsqueeze(1) + rotate_half(q) * sin[:, text].unsqueeze(1)
        k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        groups = q.shape[1] // k.shape[1]
        mask = torch.arange(t, device=text.device)[None, :] <= text[:, None]  # causal, text rows x all keys
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                             attn_mask=mask, scale=attn.scaling)
        out = attn.o_proj(out.transpose(1, 2).reshape(1, len(text), -1))
        h = hidden_states.clone()
        h[:, text] = h[:, text] + out
        h[:, text] = h[:, text] + self.mlp(self.post_attention_layernorm(h[:, text]))
        return h

    return forward


@contextmanager
def freeze_layers(state: RunState, layers: list[int]) -> Iterator[None]:
    """Install the frozen forward on `layers` for this run's prefill; always restored."""
    ad = state.adapter
    patched = []
    try:
        hook = ad.language_model.register_forward_pre_hook(
            lambda m, a, k: _arm(state, patched, layers), with_kwargs=True)
        yield
    finally:
        hook.remove()
        for layer in patched:
            layer.__dict__.pop("forward", None)


def _arm(state: RunState, patched: list, layers: list[int]):
    """At the prefill call (the visual slots are known by then), patch the chosen layers once."""
    if patched or state.visual_slots is None:
        return None
    is_visual = torch.zeros(state.seq_len, dtype=torch.bool)
    is_visual[state.visual_slots.cpu()] = True
    for i in layers:
        layer = state.adapter.layers[i]
        layer.forward = types.MethodType(frozen_forward(layer, is_visual), layer)
        patched.append(layer)
    return None


@register
@dataclass
class ShortV(Method):
    name = "shortv"
    stage = "in_llm"
    paper = "ShortV (ICCV 2025)"
    summary = ("Freezes visual tokens in the layers that change them least (calibrated per model): those layers "
               "update only the text rows, so the FLOPs drop without removing a token.")
    needs = "a per-model calibration (python app.py calibrate-shortv)"
    rope = "original (no token removed)"
    keep_all = {"n_frozen": 0}

    n_frozen: int = -1  # layers frozen; -1: the paper's 19 of 32, scaled to this model

    def validate(self) -> None:
        super().validate()
        if self.n_frozen < -1:
            raise RequestError(f"{self.name}: n_frozen must be >= -1")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        ad = state.adapter
        depth = len(ad.layers)
        if self.n_frozen > depth:  # refused, not clamped: the card must not show a setting that never ran
            raise RequestError(f"{self.name}: n_frozen {self.n_frozen} is more than this model's {depth} layers")
        n = round(19 * depth / 32) if self.n_frozen == -1 else self.n_frozen
        path = calibration_path(str(getattr(ad.model, "name_or_path", "")))
        if n and not path.is_file():
            raise RequestError(f"ShortV has no calibration for this model ({path.name} missing): run "
                               f"python app.py calibrate-shortv --model <name>")
        order = json.loads(path.read_text())["layers_by_contribution"] if n else []
        frozen = sorted(order[:n])
        v = state.visual_in  # ShortV removes nothing: every layer holds every visual token
        state.per_layer = [0 if i in frozen else v for i in range(depth)]
        state.info.update(frozen_layers=frozen, calibration=path.name, n_frozen=n)
        with freeze_layers(state, frozen):
            yield
