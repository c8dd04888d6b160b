"""MaTVLM's hybrid: a quarter of the decoder's attention layers become Mamba-2 mixers (torch only, no kernels).

`Mamba2Mixer` follows Mamba-2 as MaTVLM configures it (expand 1, one group per head, state size = head dim):
in_proj -> [z, x, B, C, dt]; a causal depthwise conv (width 4) + SiLU over [x, B, C]; per head h the scan
    s_t = exp(dt_t A_h) s_{t-1} + dt_t x_t B_t^T,   y_t = s_t C_t + D_h x_t      (s: [head_dim, d_state])
computed in its quadratic ("SSD") form, y = (L o C B^T) x with L[t, s] = exp(sum_{s<r<=t} dt_r A), which is exact,
runs any chunk length at once and continues from a carried state (so prefill, follow-up turns and one-token
decode steps share one path); then a gated RMSNorm per head, norm(y x silu(z)), and out_proj.
Initialisation from the attention layer it replaces (MaTVLM / MambaInLlama): x <- W_V, B <- W_K, C <- W_Q,
out_proj <- W_O; z, dt, A and D keep Mamba-2's default initialisation, and so does the conv unless
`identity_conv` (ours; train_hybrid's default) starts it as the identity. With grouped-query attention x and B
have the key/value heads' width and are repeated per head, as the official layer does.

`MambaAttention` stands in for a decoder layer's `self_attn` (same call, returns (out, None)); it keeps its conv
and SSM state for the cache object of the current run; that layer's KV cache holds a zero-width placeholder (no
keys or values, 0 bytes) that only counts the tokens. MaTVLM trains its Mamba layers whole: each swapped layer's
MLP and norms train with its mixer (`MambaBlock`). Hybrid files: `hybrid_mamba2.safetensors` beside the model,
`layers.{i}.mixer.*`, `layers.{i}.mlp.*`, `layers.{i}.*_layernorm.weight` per swapped layer, metadata
{"layers": "0,4", "base"}.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

HYBRID_FILE = "hybrid_mamba2.safetensors"


class HybridError(ValueError):
    """A missing or unusable hybrid file: the message is one line for the run's card."""


def mamba_layers(n_layers: int, share: float = 0.25, offset: int = 0) -> list[int]:
    """Every (1/share)-th layer from `offset`: MaTVLM's 0, 4, ..., 28 of 32 at 25% with offset 0 (0 and 4 of 8)."""
    step = round(1 / share)
    return list(range(offset, n_layers, step))


class Mamba2Mixer(torch.nn.Module):
    def __init__(self, d_model: int, heads: int, kv_heads: int, head_dim: int, conv: int = 4, eps: float = 1e-5):
        super().__init__()
        self.h, self.hkv, self.p, self.n = heads, kv_heads, head_dim, head_dim  # d_state = head_dim
        self.d_inner, self.d_xb = heads * head_dim, kv_heads * head_dim
        self.in_proj = torch.nn.Linear(d_model, 2 * self.d_inner + 2 * self.d_xb + heads, bias=False)
        ch = 2 * self.d_xb + self.d_inner
        self.conv1d = torch.nn.Conv1d(ch, ch, conv, groups=ch, padding=conv - 1)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = torch.nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1 of dt in [1e-3, 0.1]
        self.A_log = torch.nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.D = torch.nn.Parameter(torch.ones(heads))
        self.norm_weight = torch.nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = torch.nn.Linear(self.d_inner, d_model, bias=False)
        self.eps = eps

    @classmethod
    def from_attention(cls, attn, cfg, identity_conv: bool = False) -> Mamba2Mixer:
        """The paper's initialisation from a Llama-style attention module (q/k/v/o projections). identity_conv
        (ours): the conv starts as the identity (each token its own x, B, C), not Mamba-2's random init."""
        d = attn.head_dim
        m = cls(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, d)
        with torch.no_grad():
            if identity_conv:
                m.conv1d.weight.zero_()
                m.conv1d.weight[:, 0, -1] = 1.0
                m.conv1d.bias.zero_()
            w = m.in_proj.weight  # rows: [z | x | B | C | dt]
            a, b = m.d_inner, m.d_xb
            w[a:a + b].copy_(attn.v_proj.weight)
            w[a + b:a + 2 * b].copy_(attn.k_proj.weight)
            w[a + 2 * b:2 * a + 2 * b].copy_(attn.q_proj.weight)
            m.out_proj.weight.copy_(attn.o_proj.weight)
        return m.to(attn.q_proj.weight.dtype)

    def forward(self, u: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """u [B, L, D] (continuing from `state` if given) -> (y [B, L, D], new state (conv [B, C, w-1],
        ssm [B, H, head_dim, d_state]))."""
        bsz, L, _ = u.shape
        a, b, w = self.d_inner, self.d_xb, self.conv1d.kernel_size[0]
        z, xbc, dt = self.in_proj(u).split([a, 2 * b + a, self.h], -1)
        xbc = xbc.transpose(1, 2)  # [B, C, L]
        conv_in = torch.cat([state[0], xbc], -1) if state is not None else F.pad(xbc, (w - 1, 0))
        xbc = F.silu(F.conv1d(conv_in, self.conv1d.weight, self.conv1d.bias, groups=xbc.shape[1]))  # [B, C, L]
        conv_state = conv_in[:, :, -(w - 1):]
        x, bm, cm = xbc.transpose(1, 2).split([b, b, a], -1)
        rep = self.h // self.hkv
        x = x.view(bsz, L, self.hkv, self.p).repeat_interleave(rep, 2).transpose(1, 2).float()  # [B, H, L, P]
        bm = bm.view(bsz, L, self.hkv, self.n).repeat_interleave(rep, 2).transpose(1, 2).float()  # [B, H, L, N]
        cm = cm.view(bsz, L, self.h, self.n).transpose(1, 2).float()  # [B, H, L, N]
        dt = F.softplus(dt.float() + self.dt_bias.float()).transpose(1, 2)  # [B, H, L]
        cum = torch.cumsum(dt * -torch.exp(self.A_log.float())[None, :, None], -1)  # [B, H, L], decreasing
        seg = cum[..., :, None] - cum[..., None, :]  # [B, H, t, s] = sum_{s<r<=t} dt_r A
        causal = torch.ones(L, L, dtype=torch.bool, device=u.device).tril()
        decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
        y = ((cm @ bm.transpose(-1, -2)) * decay * dt[..., None, :]) @ x  # [B, H, L, P]
        s_new = (x * (torch.exp(cum[..., -1:] - cum) * dt)[..., None]).transpose(-1, -2) @ bm  # [B, H, P, N]
        if state is not None:
            s0 = state[1]
            y = y + torch.exp(cum)[..., None] * (cm @ s0.transpose(-1, -2))
            s_new = s_new + torch.exp(cum[..., -1])[..., None, None] * s0
        y = y + self.D.float()[None, :, None, None] * x
        y = y * F.silu(z.float()).view(bsz, L, self.h, self.p).transpose(1, 2)  # gate, then the per-head norm
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        y = y.transpose(1, 2).reshape(bsz, L, a) * self.norm_weight.float()
        return self.out_proj(y.to(u.dtype)), (conv_state, s_new)


class MambaAttention(torch.nn.Module):
    """A decoder layer's `self_attn` replaced by a mixer; state kept per run (per cache object)."""

    def __init__(self, mixer: Mamba2Mixer, layer_idx: int):
        super().__init__()
        self.mixer, self.layer_idx = mixer, layer_idx
        self.state, self.owner = None, None

    def forward(self, hidden_states: torch.Tensor, cache=None, **kwargs) -> tuple[torch.Tensor, None]:
        if cache is None:  # training or a one-shot forward: the whole sequence, no carried state
            return self.mixer(hidden_states)[0], None
        if cache is not self.owner:  # a new run (the runner makes one cache per run)
            self.state, self.owner = None, cache
        out, self.state = self.mixer(hidden_states, self.state)
        # No keys or values: a zero-head placeholder [B, 0, L, d] (0 bytes) keeps this layer's cache length right
        # for the model's mask bookkeeping, which reads layer 0's length.
        empty = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], self.mixer.p)
        cache.update(empty, empty, self.layer_idx)
        return out, None

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state) if self.state is not None else 0


class MambaBlock(torch.nn.Module):
    """What a hybrid layer trains: the mixer, plus that decoder layer's MLP and norms (MaTVLM trains its Mamba layers
    whole; the MLP and norms start as the original layer's)."""

    PARTS = ("mlp", "input_layernorm", "post_attention_layernorm")

    def __init__(self, mixer: Mamba2Mixer, layer: torch.nn.Module):
        super().__init__()
        from .twig import detached_copy

        self.mixer = mixer
        for part in self.PARTS:
            setattr(self, part, detached_copy(getattr(layer, part)))

    @classmethod
    def from_layer(cls, layer, cfg, identity_conv: bool = False) -> MambaBlock:
        return cls(Mamba2Mixer.from_attention(layer.self_attn, cfg, identity_conv), layer)


@contextmanager
def swapped_in(layers, blocks: dict[int, MambaBlock]) -> Iterator[dict[int, MambaAttention]]:
    """Decoder layers `blocks` run as Mamba-2 layers inside the block (their attention, MLP and norms swapped), and
    are restored after it. Yields the attention stand-ins (their state bytes are the run's Mamba state)."""
    saved = {i: {p: getattr(layers[i], p) for p in ("self_attn", *MambaBlock.PARTS)} for i in blocks}
    stand_ins = {i: MambaAttention(b.mixer, i) for i, b in blocks.items()}
    try:
        for i, b in blocks.items():
            layers[i].self_attn = stand_ins[i]
            for p in MambaBlock.PARTS:
                setattr(layers[i], p, getattr(b, p))
        yield stand_ins
    finally:
        for i, parts in saved.items():
            for p, m in parts.items():
                setattr(layers[i], p, m)


def save_hybrid(blocks: dict[int, MambaBlock], path: str | Path, base: str, dtype=torch.float16) -> None:
    tensors = {f"layers.{i}.{k}": v.detach().to(dtype).contiguous() for i, b in blocks.items()
               for k, v in b.state_dict().items()}
    save_file(tensors, str(path), metadata={"layers": ",".join(map(str, blocks)), "base": base})


def load_hybrid(model, path: Path) -> dict[int, MambaBlock]:
    """Hybrid layers for `model` from a hybrid file; raises HybridError (one line) when missing or not fitting."""
    if not path.is_file():
        raise HybridError(f"no hybrid file at {path}: distil one with python -m backends.tiny.train_hybrid "
                          "--model DIR")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layers = [int(x) for x in meta["layers"].split(",")]
    except Exception as e:
        raise HybridError(f"cannot read the hybrid file {path}: {str(e).splitlines()[0][:120]}") from None
    lm, cfg = model.model.language_model, model.config.text_config
    out = {}
    for i in layers:
        if not 0 <= i < len(lm.layers) or not hasattr(lm.layers[i], "self_attn"):
            raise HybridError(f"{path}: layer {i} is not a decoder layer of this {len(lm.layers)}-layer model")
        m = MambaBlock.from_layer(lm.layers[i], cfg)
        want = m.state_dict()
        for k, v in want.items():
            t = tensors.get(f"layers.{i}.{k}")
            if t is None or tuple(t.shape) != tuple(v.shape):
                raise HybridError(f"{path} does not fit this model: layers.{i}.{k} is "
                                  f"{'missing' if t is None else tuple(t.shape)}, the model needs {tuple(v.shape)}")
        m.load_state_dict({k: tensors[f"layers.{i}.{k}"].to(v.dtype) for k, v in want.items()})
        out[i] = m.to(next(lm.parameters()).device).eval()
    return out
