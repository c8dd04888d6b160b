"""`sparsevila` (SparseVILA, ICCV 2025), prefill stage: query-agnostic pruning by vision-encoder salience.

Salience is the head-mean attention the CLS token pays each patch in the layer that produces LLaVA's
features (towers without CLS: mean attention each token receives). The top round(keep x N) patches are kept
in image order and re-indexed contiguously (1-D RoPE). The paper pairs this with query-aware retrieval of
visual KV at decode time, which is not part of this stage. No official code is released: this follows the
paper's description.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.state import RunState
from methods._util import budget, cls_attention, received_attention
from methods.base import Method
from methods.registry import register


@register
@dataclass
class SparseVILA(Method):
    name = "sparsevila"
    stage = "before_llm"
    paper = "SparseVILA (ICCV 2025), prefill stage"
    summary = ("Query-agnostic prefill pruning: keeps the patches the vision encoder finds most salient "
               "(CLS attention), 60% sparsity by default. Decode-time retrieval is not included yet.")
    needs = "vision attention (recomputed q.k, no eager needed)"
    fidelity = "paper description (no official code)"
    budget_field = "keep"

    keep: float = 0.4  # the paper's prefill sparsity is 45-75%, e.g. 60% -> keep 40%

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
