"""Dropping visual tokens inside the LLM during prefill, shared by FastV, FEATHER and METEOR.

transformers 5.24 computes the rotary (cos, sin), position ids and the mask once per forward and hands the
same full-length tensors to every decoder layer. So one forward pre-hook per layer does the work:
  * before layer K-1 of a stage, `select(stage, layer, hidden, position_embeddings, visual)` picks the visual
    tokens to keep (scores recomputed from that layer's own q/k projections: the model keeps sdpa);
  * at layer K the hidden states are sliced to the survivors; at every layer >= K the rotary embedding,
    position ids and any 4-D mask are sliced the same way, so survivors keep their original positions.
Layers >= K then cache fewer keys/values; decoding continues at the original prompt length (the runner's
loop passes explicit position ids, and with sdpa a single query needs no mask).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from backends.state import RunState

# select(stage index, scoring layer, hidden [1, T, D], (cos, sin), visual sequence indices [V]) -> kept rows of V
Selector = Callable[[int, int, torch.Tensor, tuple, torch.Tensor], torch.Tensor]


class PrefillDrop:
    def __init__(self, state: RunState, stage_layers: list[int], select: Selector):
        n_layers = len(state.adapter.layers)
        if sorted(set(stage_layers)) != list(stage_layers) or not all(1 <= k < n_layers for k in stage_layers):
            raise ValueError(f"pruning layers must increase within 1..{n_layers - 1}, got {stage_layers}")
        self.state, self.stages, self.select = state, list(stage_layers), select
        self.alive: torch.Tensor | None = None  # full-sequence indices alive at the current layer
        self.pending: torch.Tensor | None = None  # rows of the current sequence to keep at the next stage
        self.prefill = False

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def _visual_now(self) -> torch.Tensor:
        """Positions, in the current (shortened) sequence, of the visual tokens still alive."""
        return torch.isin(self.alive, self.state.visual_slots.to(self.alive.device)).nonzero().flatten()

    def _record_stage(self) -> None:
        """Per-frame share of each patch still alive after this stage (for stage_maps / kept_map)."""
        st = self.state
        alive = torch.isin(st.visual_slots.to(self.alive.device), self.alive).cpu()
        maps, off = [], 0
        for frame in st.frames:
            k = frame.hidden.shape[0]
            maps.append((frame.sources * alive[off:off + k, None]).sum(0).clamp(0, 1))
            off += k
        st.stage_maps.append(maps)

    # ---- hooks ---------------------------------------------------------------------------------------
    def _model_pre(self, module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        self.prefill = emb is not None and emb.shape[1] > 1
        if self.prefill:
            self.alive = torch.arange(emb.shape[1], device=emb.device)
            self.state.per_layer = []
        return None

    def _layer_pre(self, idx: int, module, args, kwargs):
        if not self.prefill:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if idx in self.stages and self.pending is not None:  # drop here
            hidden = hidden[:, self.pending]
            self.alive = self.alive[self.pending]
            self.pending = None
            self._record_stage()
        if idx >= self.stages[0]:
            a = self.alive
            cos, sin = kwargs["position_embeddings"]
            kwargs["position_embeddings"] = (cos[:, a], sin[:, a])
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"][..., a]
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 4:
                kwargs["attention_mask"] = mask[:, :, a][:, :, :, a]
        vis = self._visual_now()
        self.state.per_layer.append(int(vis.numel()))
        if idx + 1 in self.stages:  # score with this layer's input, drop from the next layer on
            stage = self.stages.index(idx + 1)
            keep_vis = self.select(stage, idx, hidden, kwargs["position_embeddings"], vis)
            rows = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
            rows[vis] = False
            rows[vis[keep_vis]] = True
            self.pending = rows.nonzero().flatten()  # sequence order is kept
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    @contextmanager
    def installed(self) -> Iterator[None]:
        ad = self.state.adapter
        self.state.info["in_llm_positions"] = "original (survivors keep their position ids)"
        with layer_hooks(ad, self._model_pre, self._layer_pre):
            yield


@contextmanager
def layer_hooks(ad, model_pre, layer_pre, model_post=None) -> Iterator[None]:
    """Install a pre-hook (and optionally a post-hook) on the language model and `layer_pre(i, module, args,
    kwargs)` on every decoder layer; always remove them."""
    handles = [ad.language_model.register_forward_pre_hook(model_pre, with_kwargs=True)]
    try:
        if model_post is not None:
            handles.append(ad.language_model.register_forward_hook(model_post, with_kwargs=True))
        for i, layer in enumerate(ad.layers):
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i: layer_pre(i, m, a, k), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores (ties broken by position), in ascending order."""
    k = max(1, min(k, scores.numel()))
    return scores.float().topk(k).indices.sort().values


def scaled_layer(layer: int, paper_layer: int, paper_depth: int, depth: int) -> int:
    """A layer index given for a `paper_depth`-layer model, scaled to this model (`layer` >= 0 wins)."""
    if layer >= 0:
        return layer
    return max(1, min(depth - 1, round(paper_layer * depth / paper_depth)))
