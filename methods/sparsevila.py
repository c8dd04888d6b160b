"""`sparsevila` (SparseVILA, ICCV 2025), prefill stage: query-agnostic pruning by vision-encoder salience.

Salience is the head-mean attention the CLS token pays each patch in the layer that produces LLaVA's
features, recomputed from that layer's q/k (its input); towers without CLS or summary token (SigLIP) use, as
the paper says, the mean attention each token receives: softmax rows of every query, averaged over queries
and heads. The top round(keep x N) patches are kept in image order and re-indexed contiguously (1-D RoPE).

Decode-time retrieval (the paper's second stage): the full visual KV of every layer stays in a store. At each
turn of a conversation the prefill of that turn's question sees every prefill-kept visual token; then, per
layer, the question's tokens score the visual keys (softmax of q.k over the visual keys only, summed over the
question's tokens, averaged over heads) and the top round(retrieve x N) entries are the only visual KV the
decoder reads for that turn. The next turn restores the store and may select others, so a later question
about another object can still find it. Our choices (no official code): `retrieve` is a share of the input's
visual tokens (the paper reports both sparsities against the full count; capped at the prefill-kept count);
the softmax runs over the visual keys only; the question's tokens are the text after the image at turn 1 and
every token a follow-up prefills. No official code is released: this follows the paper's description.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from backends.adapter import rotate_half
from backends.state import RunState
from backends.types import RequestError
from methods._llm import layer_hooks
from methods._util import budget, cls_attention, received_attention
from methods.base import Method
from methods.registry import register


@register
@dataclass
class SparseVILA(Method):
    name = "sparsevila"
    stage = "before_llm"
    paper = "SparseVILA (ICCV 2025)"
    summary = ("Query-agnostic prefill pruning: keeps the patches the vision encoder finds most salient "
               "(CLS attention; without CLS, the mean attention each token receives), 60% sparsity by default. "
               "At decode, each turn's question retrieves per layer the visual KV it attends to most "
               "(share retrieve of the visual tokens); the rest stays stored for later turns.")
    needs = "vision attention (recomputed q.k, no eager needed); each decoder layer's queries and cached keys"
    fidelity = ("paper description (no official code): prefill salience and per-turn, per-layer retrieval by the "
                "question's attention are the paper's; retrieve as a share of all visual tokens, the softmax over "
                "visual keys only and which tokens are the question are our choices")
    budget_field = "keep"

    keep: float = 0.4  # the paper's prefill sparsity is 45-75%, e.g. 60% -> keep 40%
    retrieve: float = 0.25  # visual KV each turn's decode reads, share of the input's visual tokens (75% sparsity)
    keep_all = {"keep": 1.0, "retrieve": 1.0}

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.retrieve <= 1.0:
            raise RequestError(f"{self.name}: retrieve must be in (0, 1], got {self.retrieve}")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        with Retrieval(state, self.retrieve).installed():
            yield

    def reduce(self, state: RunState) -> None:
        ad = state.adapter
        layer = ad.feature_depth - 1
        q, k = ad.vision_qk(layer, state.vision_states[layer])
        if ad.num_prefix_tokens == 1:
            sal = cls_attention(q, k, ad.vision_heads)
        else:
            sal = received_attention(q, k, ad.vision_heads)[:, ad.num_prefix_tokens:]
        state.info["salience_layer"] = layer
        for i, frame in enumerate(state.frames):
            n = frame.hidden.shape[0]
            keep = sal[i].topk(budget(self.keep, n)).indices.sort().values
            state.frames[i] = frame.select(keep)


class Retrieval:
    """Per-turn selection of the visual KV the decoder reads, over a store of every layer's visual KV."""

    def __init__(self, state: RunState, share: float):
        self.state, self.share = state, share
        self.prefill = False
        self.queries: dict[int, torch.Tensor] = {}  # layer -> the question's queries [1, H, q, d] (with RoPE)
        self.store: list[tuple[torch.Tensor, torch.Tensor]] = []  # layer -> visual (keys, values) [1, Hkv, V, d]
        self.active: list[tuple[int, torch.Tensor] | None] = []  # layer -> (cache length, rows kept) if sliced

    def _model_pre(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        self.prefill = x is not None and x.shape[1] > 1  # a turn's prefill; decode steps feed one token
        if self.prefill:
            self._restore()
        return None

    def _layer_pre(self, idx: int, module, args, kwargs):
        if self.prefill:
            hidden = args[0] if args else kwargs["hidden_states"]
            rows, attn, d = self.state.query, module.self_attn, self.state.adapter.head_dim
            x = module.input_layernorm(hidden[:, rows])
            q = attn.q_proj(x).view(1, len(rows), -1, d).transpose(1, 2)
            cos, sin = (t[:, rows].unsqueeze(1) for t in kwargs["position_embeddings"])
            self.queries[idx] = q * cos + rotate_half(q) * sin
        return None

    def _model_post(self, module, args, kwargs, output):
        if self.prefill:
            self.prefill = False
            self._select()
        return None

    def _select(self) -> None:
        st = self.state
        vis = st.visual_slots
        n = min(budget(self.share, st.visual_in), vis.numel())
        first = not self.store
        counts = torch.zeros(vis.numel())
        self.active = []
        for i, layer in enumerate(st.cache.layers):
            k = layer.keys[:, :, vis.to(layer.keys.device)]
            if first:
                self.store.append((k, layer.values[:, :, vis.to(layer.keys.device)]))
            q = self.queries[i]
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            att = torch.softmax((q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5, -1)  # [1, H, q, V]
            top = att[0].sum(1).mean(0).topk(n).indices.cpu()
            counts[top] += 1
            if n == vis.numel():
                self.active.append(None)
                continue
            keep = torch.ones(layer.keys.shape[-2], dtype=torch.bool)
            keep[vis.cpu()] = False
            keep[vis.cpu()[top]] = True
            rows = keep.nonzero().flatten().to(layer.keys.device)
            self.active.append((layer.keys.shape[-2], rows))
            layer.keys, layer.values = layer.keys[:, :, rows], layer.values[:, :, rows]
        share = counts / len(st.cache.layers)  # [V]: share of layers that retrieved each kept token
        maps, off = [], 0
        for frame in st.frames:
            m = frame.hidden.shape[0]
            maps.append((frame.sources * share[off:off + m, None]).sum(0).clamp(0, 1))
            off += m
        if first:
            st.stage_maps = [[f.kept_map() for f in st.frames]]
        st.stage_maps = st.stage_maps[:1] + [maps]  # prefill-kept, then this turn's retrieval
        st.per_layer, st.per_layer_at = [n] * len(st.cache.layers), "decode"
        st.info.update(retrieved_per_layer=n, store_bytes=sum(k.numel() * k.element_size() * 2 for k, _ in self.store),
                       kept_map_meaning="share of decoder layers whose decode reads each patch's KV this turn")

    def _restore(self) -> None:
        """Put the stored visual entries back in each layer's cache (a new turn selects again)."""
        vis = self.state.visual_slots
        for layer, (k_vis, v_vis), act in zip(self.state.cache.layers, self.store, self.active):
            if act is None:
                continue
            length, rows = act
            parts = []
            for t, full_vis in ((layer.keys, k_vis), (layer.values, v_vis)):
                full = t.new_empty(*t.shape[:2], length, t.shape[-1])
                full[:, :, rows] = t[:, :, :rows.numel()]
                full[:, :, vis.to(t.device)] = full_vis
                parts.append(torch.cat([full, t[:, :, rows.numel():]], dim=2))
            layer.keys, layer.values = parts
        self.active = []

    @contextmanager
    def installed(self) -> Iterator[None]:
        with layer_hooks(self.state.adapter, self._model_pre, self._layer_pre, self._model_post):
            yield
