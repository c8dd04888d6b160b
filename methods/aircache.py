"""`aircache` (AirCache, ICCV 2025): one-shot compression of each layer's visual KV cache right after prefill.

Per decoder layer, from that layer's own q/k projections (recomputed with RoPE, as the model applies it; the
model keeps sdpa):
  1. elite observation window: the text tokens j whose attention from the last prompt token (softmax over the
     text keys) is >= alpha x its maximum (alpha = 0.9);
  2. visual importance I_v: attention of the elite queries over [visual; elite] keys (one softmax), averaged
     over the elite rows, the visual columns kept;
  3. layer budget: strength s_t = sum(I_v) and skewness s_k of I_v, each normalised across layers, give
     r_l = (s'_t + s'_k) / 2 x keep; the top r_l x N_v visual entries of that layer's cache are kept, text KV
     always. Decoding then reads fewer visual keys/values per layer; prefill itself is not shortened.
No official code; the paper leaves two choices open, exposed here as parameters (our defaults):
  `heads`: "mean" averages the attention over heads before anything else (the card's suggestion); "max" takes
           each visual token's strongest head;
  `norm`:  "mean" divides s_t and s_k by their mean over layers (negative skewness clipped to 0), so the budgets
           average exactly `keep`; "softmax" uses L x softmax over layers (negatives allowed, also mean 1).
Budgets are made whole tokens by largest remainders after clipping each layer to [1, N_v] (the paper rounds
each up), so their sum is exactly round(keep x N_v x L): the mean budget is keep x N_v within one token.
The elite queries attend to every elite key (no causal mask among them), as the paper's formula reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from backends.state import RunState
from backends.types import RequestError
from methods._llm import layer_hooks
from methods.base import Method
from methods.registry import register


def skewness(x: torch.Tensor) -> torch.Tensor:
    """Sample skewness of each row of x [L, N]: N / ((N-1)(N-2)) * sum(((x - mean) / std)^3). [L]."""
    n = x.shape[-1]
    if n < 3:
        return torch.zeros(x.shape[0])
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-12)
    return n / ((n - 1) * (n - 2)) * (z**3).sum(-1)


def normalise(s: torch.Tensor, how: str) -> torch.Tensor:
    """Across layers to mean 1: s / mean(s) (negatives clipped) or L x softmax(s)."""
    if how == "softmax":
        return s.numel() * torch.softmax(s, 0)
    s = s.clamp_min(0)
    return s / s.mean() if s.sum() > 0 else torch.ones_like(s)


def whole_budgets(share: torch.Tensor, n: int, keep: float) -> list[int]:
    """Per-layer token counts in [1, n] from per-layer shares (mean `keep`), summing to round(keep x n x L)."""
    want = share.double() * n
    total = min(max(round(keep * n * want.numel()), want.numel()), n * want.numel())
    for _ in range(want.numel()):  # clip to [1, n] and hand what clipping moved to the layers still free
        want = want.clamp(1, n)
        gap = total - float(want.sum())
        free = want < n if gap > 0 else want > 1
        if abs(gap) < 1e-9 or not free.any():
            break
        want[free] += gap * want[free] / want[free].sum()
    base = want.floor().clamp(1, n)
    rest = total - int(base.sum())
    order = (want - base).argsort(descending=True).tolist()
    for i in order:  # largest remainders first
        if rest <= 0:
            break
        if base[i] < n:
            base[i] += 1
            rest -= 1
    return [int(b) for b in base]


@register
@dataclass
class AirCache(Method):
    name = "aircache"
    stage = "kv_cache"
    paper = "AirCache (ICCV 2025)"
    summary = ("After prefill, keeps per layer the visual KV entries that the elite text tokens (those the last "
               "prompt token attends to within alpha of its maximum) attend to most; layers get uneven budgets from "
               "the strength and skewness of that importance, averaging keep. Our choices (no code): heads averaged, "
               "strength and skewness divided by their cross-layer mean (parameters heads, norm).")
    needs = "q/k projections of every decoder layer at prefill (recomputed: the model keeps sdpa)"
    fidelity = "paper description (no official code); head reduction and budget normalisation are our choices"
    budget_field = "keep"
    rope = "original (cached keys keep their rotary phase; decoding continues at the full prompt length)"

    keep: float = 0.1  # visual KV kept, averaged over layers (the paper's headline 10%)
    alpha: float = 0.9  # elite window: attention >= alpha x the last token's maximum over text
    heads: Literal["mean", "max"] = "mean"
    norm: Literal["mean", "softmax"] = "mean"

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.alpha <= 1.0:
            raise RequestError(f"{self.name}: alpha must be in (0, 1], got {self.alpha}")

    def importance(self, state: RunState, layer: int, hidden: torch.Tensor, pos) -> tuple[torch.Tensor, int]:
        """Visual importance I_v [V] at `layer` from its input hidden [1, T, D], and the elite window's size."""
        ad, vis = state.adapter, state.visual_slots.to(hidden.device)
        is_text = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
        is_text[vis] = False
        text = is_text.nonzero().flatten()
        last = ad.llm_attention(layer, hidden, pos, text[-1:], text)[:, 0]  # [H, Nt]
        last = last.mean(0) if self.heads == "mean" else last.max(0).values
        elite = text[last >= self.alpha * last.max()]
        att = ad.llm_attention(layer, hidden, pos, elite, torch.cat([vis, elite]))  # [H, E, V + E]
        att = att.mean(0) if self.heads == "mean" else att.max(0).values
        return att[:, : vis.numel()].mean(0).cpu(), int(elite.numel())

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        ad = state.adapter
        scores: dict[int, torch.Tensor] = {}
        elite: dict[int, int] = {}
        live = {"prefill": False}

        def model_pre(module, args, kwargs):
            emb = kwargs.get("inputs_embeds")
            live["prefill"] = state.turn == 0 and emb is not None and emb.shape[1] > 1
            return None

        def layer_pre(idx, module, args, kwargs):
            if live["prefill"]:
                hidden = args[0] if args else kwargs["hidden_states"]
                scores[idx], elite[idx] = self.importance(state, idx, hidden, kwargs["position_embeddings"])
            return None

        def model_post(module, args, kwargs, output):
            if live["prefill"]:
                live["prefill"] = False
                self.compress(state, torch.stack([scores[i] for i in range(len(ad.layers))]), elite)
            return None

        with layer_hooks(ad, model_pre, layer_pre, model_post):
            yield

    def compress(self, state: RunState, imp: torch.Tensor, elite: dict[int, int]) -> None:
        """Slice every layer's cache to its budget. imp: [L, V] visual importance per layer."""
        n_layers, v = imp.shape
        strength, skew = imp.sum(1), skewness(imp.double()).float()
        share = (normalise(strength, self.norm) + normalise(skew, self.norm)) / 2 * self.keep
        counts = whole_budgets(share, v, self.keep)
        vis = state.visual_slots
        maps = []
        for i, layer in enumerate(state.cache.layers):
            top = imp[i].topk(counts[i]).indices
            kept = torch.zeros(v, dtype=torch.bool)
            kept[top] = True
            if counts[i] < v:
                drop = torch.zeros(layer.keys.shape[-2], dtype=torch.bool)
                drop[vis.cpu()[~kept]] = True
                rows = (~drop).nonzero().flatten().to(layer.keys.device)
                layer.keys, layer.values = layer.keys[:, :, rows], layer.values[:, :, rows]
            maps.append(self._frame_maps(state, kept))
        state.per_layer, state.per_layer_at = counts, "decode"
        mean = [torch.stack([m[f] for m in maps]).mean(0) for f in range(len(state.frames))]
        state.stage_maps = [mean]  # the share of layers that keep each patch
        rows, cols = state.grid
        state.info.update(layer_budgets=counts, elite_sizes=[elite[i] for i in range(n_layers)],
                          strength=[round(float(x), 5) for x in strength], skewness=[round(float(x), 4) for x in skew],
                          layer_maps=[[m.reshape(rows, cols).tolist() for m in layer] for layer in maps],
                          kept_map_meaning="share of decoder layers that keep each patch's KV")

    @staticmethod
    def _frame_maps(state: RunState, kept: torch.Tensor) -> list[torch.Tensor]:
        """Per frame [N]: which patches' visual KV a layer keeps (kept: [V] bool over the LLM's visual tokens)."""
        out, off = [], 0
        for frame in state.frames:
            k = frame.hidden.shape[0]
            out.append((frame.sources * kept[off:off + k, None]).sum(0).clamp(0, 1))
            off += k
        return out
