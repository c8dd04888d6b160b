"""The TwigVLM twig: T decoder layers grown on base layer K-1's output, plus a norm and an LM head.

The twig reads the hidden states the frozen base produces after its first K layers and runs T layers of the
base's own decoder-layer class (initialised as copies of base layers K..K+T-1), then its own norm and head. It
serves twice (methods/twigvlm.py): its last layer's attention from the last prompt token ranks the visual tokens
(twig-guided pruning), and layers 0..K-1 + twig + twig head form the draft model of self-speculative decoding.

File layout (a safetensors file) is the official repository's (MILVLG/twigvlm, `inference/builder.py`): the twig
saved as a small Llama model, `model.layers.{i}.*` for twig layer i, `model.norm.weight`, `lm_head.weight`.
Our own files add metadata {"K", "T", "base"}; an official folder holds `model.safetensors` with no metadata, and
the only published twig (LLaVA-1.5-7B) is K = 2, T = 3 (the repository reads K from its `twig_K` variable).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

TWIG_FILE = "twig.safetensors"  # beside the built-in model's weights
OFFICIAL_FILE = "model.safetensors"  # inside an official twig folder
OFFICIAL_K = 2  # the published LLaVA-1.5-7B twig: K = 2, T = 3


class TwigError(ValueError):
    """A missing or unusable twig file: the message is one line for the run's card."""


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def causal_mask(q: int, past: int, device) -> torch.Tensor | None:
    """[1, 1, q, past + q] bool (True = attend) for q new tokens after `past` cached ones; None where sdpa's own
    causal flag is right (one query, or no past)."""
    if q == 1 or past == 0:
        return None
    m = torch.ones(q, past + q, dtype=torch.bool, device=device)
    m[:, past:] = torch.ones(q, q, dtype=torch.bool, device=device).tril()
    return m[None, None]


def detached_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without the hooks or forward overrides installed on the original (by transformers or by a
    method running at the time): the copy is a plain module of its own."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._forward_hooks_with_kwargs,
                      m._forward_pre_hooks_with_kwargs, m._forward_hooks_always_called):
            hooks.clear()
        m.__dict__.pop("forward", None)
    return twin


class Twig(torch.nn.Module):
    """layers: T decoder layers (self_attn.layer_idx = 0..T-1, so they use their own cache); k: the base layer
    count they follow."""

    def __init__(self, layers: list[torch.nn.Module], norm: torch.nn.Module, head: torch.nn.Module, k: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.norm, self.head, self.k = norm, head, k

    @classmethod
    def from_base(cls, model, k: int, t: int) -> Twig:
        """Copies of base layers K..K+T-1, the final norm and the LM head (the paper's initialisation)."""
        lm = model.model.language_model
        if not (1 <= k and k + t <= len(lm.layers) and t >= 1):
            raise TwigError(f"twig K={k}, T={t} does not fit a {len(lm.layers)}-layer decoder")
        layers = [detached_copy(lm.layers[k + i]) for i in range(t)]
        for i, layer in enumerate(layers):
            layer.self_attn.layer_idx = i
        return cls(layers, detached_copy(lm.norm), detached_copy(model.lm_head), k)

    @property
    def t(self) -> int:
        return len(self.layers)

    def forward(self, hidden: torch.Tensor, position_embeddings, cache=None, keep_last_input: bool = False
                ) -> torch.Tensor:
        """hidden [B, q, D] (base layer K-1's output), position_embeddings (cos, sin) [B, q, d] -> [B, q, D] (before
        the twig norm). With `cache` the q tokens follow the ones it holds (causal among themselves).
        keep_last_input: keep the last layer's input in `self.last_input` (pruning scores it)."""
        past = cache.get_seq_length() if cache is not None else 0
        mask = causal_mask(hidden.shape[1], past, hidden.device)
        for i, layer in enumerate(self.layers):
            if keep_last_input and i == len(self.layers) - 1:
                self.last_input = hidden
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, cache=cache,
                           use_cache=cache is not None)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, q, D] twig states -> [B, q, vocab]."""
        return self.head(self.norm(hidden))

    def last_layer_attention(self, hidden_in: torch.Tensor, position_embeddings, keys: torch.Tensor) -> torch.Tensor:
        """Head-mean attention of the last token over `keys` (sequence indices) in the twig's last layer, as its
        eager attention computes it (softmax over every earlier key). hidden_in: that layer's input [1, L, D],
        the whole prompt (prefill). Returns [len(keys)] float32."""
        layer = self.layers[-1]
        attn = layer.self_attn
        d = attn.head_dim
        x = layer.input_layernorm(hidden_in)
        cos, sin = position_embeddings
        q = attn.q_proj(x[:, -1:]).view(1, 1, -1, d).transpose(1, 2)  # [1, H, 1, d]
        k = attn.k_proj(x).view(1, x.shape[1], -1, d).transpose(1, 2)  # [1, Hkv, L, d]
        q = q * cos[:, -1:].unsqueeze(1) + rotate_half(q) * sin[:, -1:].unsqueeze(1)
        k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        probs = torch.softmax((q @ k.transpose(-1, -2)).float()[0, :, 0] * d**-0.5, -1)  # [H, L]
        return probs.mean(0)[keys]

    # ---- files -------------------------------------------------------------------------------------
    def official_state(self) -> dict[str, torch.Tensor]:
        """Weights under the official twig's key names (a Llama model whose layers are the twig's)."""
        out = {f"model.layers.{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.state_dict().items()}
        out["model.norm.weight"] = self.norm.weight
        out["lm_head.weight"] = self.head.weight
        return out

    def save(self, path: str | Path, base: str, dtype=torch.float16) -> None:
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.official_state().items()}
        save_file(tensors, str(path), metadata={"K": str(self.k), "T": str(self.t), "base": base})


def twig_file(model_dir: str | None, twig_path: str) -> Path:
    """The twig to load: `twig_path` (an official folder with model.safetensors, or a file) when given, else the
    built-in folder's twig.safetensors."""
    if twig_path:
        p = Path(twig_path)
        return p / OFFICIAL_FILE if p.is_dir() else p
    if model_dir and os.path.isdir(model_dir):
        return Path(model_dir) / TWIG_FILE
    raise TwigError("twigvlm needs a twig for this model: pass --set twigvlm.twig_path=FOLDER (the official "
                    "LLaVA-1.5-7B K2-T3 twig folder, with model.safetensors)")


def load_twig(model, path: Path) -> Twig:
    """Build a twig for `model` from a twig file (ours or the official layout). Raises TwigError (one line)."""
    if not path.is_file():
        raise TwigError(f"no twig file at {path}: train one with python -m backends.tiny.train_twig --model DIR, "
                        "or pass --set twigvlm.twig_path=FOLDER")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a truncated or foreign file: say which, in one line
        raise TwigError(f"cannot read the twig file {path}: {str(e).splitlines()[0][:120]}") from None
    idx = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")})
    if not idx or idx != list(range(len(idx))) or "lm_head.weight" not in tensors or "model.norm.weight" not in tensors:
        raise TwigError(f"{path} is not a twig (expected model.layers.0..T-1.*, model.norm.weight, lm_head.weight)")
    k = int(meta.get("K", OFFICIAL_K))
    lm = model.model.language_model
    cfg = model.config.text_config
    if k + len(idx) > len(lm.layers):
        raise TwigError(f"{path}: a K={k}, T={len(idx)} twig does not fit this {len(lm.layers)}-layer model")
    twig = Twig.from_base(model, k, len(idx))
    want = twig.official_state()
    for name, t in tensors.items():
        if name not in want:
            continue  # twig++ extras (leaf_proj, leaf_attention_module) are not used here
        if tuple(t.shape) != tuple(want[name].shape):
            raise TwigError(f"{path} does not fit this model: {name} is {tuple(t.shape)}, the model needs "
                            f"{tuple(want[name].shape)} (hidden {cfg.hidden_size}, vocab {cfg.vocab_size})")
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise TwigError(f"{path} lacks {len(missing)} twig tensor(s), e.g. {missing[0]}")
    with torch.no_grad():
        for name, p in want.items():
            p.copy_(tensors[name].to(p.dtype))
    dev = next(lm.parameters()).device
    return twig.to(dev).eval()
