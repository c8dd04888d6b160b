"""`meteor` (METEOR, ICCV 2025), stage 3: prompt-adaptive pruning at an LLM layer.

METEOR prunes in three stages: inside each of several vision encoders (1), after fusing them (2) and in the
LLM's decoding stage (3). Stages 1-2 are trained into its multi-encoder models, so only stage 3 applies to a
single-encoder model, training-free. Stage 3 (paper; no code released): per head h, the visual attention
mass VAV_h the prompt's text tokens pay to visual tokens; keep K = lambda * sum over the top-k heads of their
visual attention (a raw sum, whose size depends on the number of text tokens and heads), ranked by the
attention those heads pay. The paper does not publish k, lambda or the layer. Ours, normalised so one lambda
fits any prompt and model: K = round(lam x V x mean VAV of the top heads), VAV_h averaged over the text
queries (lam = 1: keep the share of attention the visual tokens get); top_heads = half the heads; scored at
layer K-1 (8 of 32, scaled) with the model's RoPE over the text tokens after the image, dropped from layer K on.

`stages=1-3` on a multi-encoder model (builtin-2enc) runs stage 1 inside each encoder (budgets from the feature
ranks stored with the model) and stage 2 across the projected encoders (methods/_meteor_encoders.py), re-indexed
contiguously before the LLM, then stage 3 as above. Stage maps: after stage 1, 2 and 3; per encoder in info.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from backends.state import RunState
from backends.types import RequestError
from methods._llm import PrefillDrop, scaled_layer, topk_rows
from methods._meteor_encoders import rank_budgets, stage1, stage2
from methods._util import budget
from methods.base import Method
from methods.registry import register


def adaptive_keep(att: torch.Tensor, top_heads: float, lam: float) -> tuple[torch.Tensor, int, list[int]]:
    """att: [H, Q, V] attention of Q text queries over V visual keys (rows are shares of all keys).

    Returns token scores [V], the kept count K and the chosen heads.
    """
    mass = att.sum(-1).mean(-1)  # [H] share of attention the text pays to visual tokens
    k = max(1, round(top_heads * att.shape[0]))
    heads = mass.topk(k).indices
    n = round(lam * att.shape[-1] * float(mass[heads].mean()))
    return att[heads].sum((0, 1)), max(1, min(att.shape[-1], n)), sorted(heads.tolist())


@register
@dataclass
class Meteor(Method):
    name = "meteor"
    stage = "in_llm"
    paper = "METEOR (ICCV 2025), stage 3 (stages 1-3 on builtin-2enc)"
    summary = ("Prompt-adaptive: keeps as many visual tokens as the most visual-minded heads' attention mass "
               "says, ranked by those heads. K is normalised (ours: lam x V x mean visual attention of the top "
               "heads), not the paper's raw sum lam x sum of their attention. Stages 1-2 need a multi-encoder model "
               "(builtin-2enc: stages=1-3) and are refused on one-encoder models.")
    needs = "q/k of one decoder layer; stages 1-2 need a multi-encoder model with stored feature ranks"
    fidelity = ("stage 3 only, from the paper (no code); k, lambda and layer unpublished: our defaults, and our "
                "normalised K = lam x V x mean top-head visual attention instead of the raw sum; stages 1-2 "
                "(stages=1-3 on builtin-2enc) from the paper's description, applied training-free (the paper trains "
                "with them); the depth segments, the conv encoder's activation-norm score, stage 2's mean redundancy "
                "with one-at-a-time removal, encoder_keep and fusion_keep are ours")
    rope = "original (tokens keep their position ids)"
    keep_all = {"lam": 1e6}

    stages: Literal["3", "1-3"] = "3"
    layer: int = -1  # -1: layer 8 of 32, scaled to this model
    top_heads: float = 0.5  # share of heads with the most visual attention mass
    lam: float = 1.0  # lambda: tokens kept per unit of visual attention mass (x V)
    encoder_keep: float = 0.5  # stages 1-3: share of all encoders' tokens stage 1 keeps (ours), split by feature rank
    fusion_keep: float = 0.75  # stages 1-3: share of stage 1's survivors stage 2 keeps (ours)

    def validate(self) -> None:
        super().validate()
        if not 0 < self.top_heads <= 1 or self.lam <= 0:
            raise RequestError(f"{self.name}: top_heads must be in (0, 1] and lam > 0")
        if not (0 < self.encoder_keep <= 1 and 0 < self.fusion_keep <= 1):
            raise RequestError(f"{self.name}: encoder_keep and fusion_keep must be in (0, 1]")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        if self.stages != "3" and len(state.adapter.encoders) < 2:
            raise RequestError("METEOR stages 1-2 prune inside and across several vision encoders and are trained "
                               "into its multi-encoder models; this model has one vision encoder. Use stages=3.")
        ad = state.adapter
        k = scaled_layer(self.layer, 8, 32, len(ad.layers))

        def select(stage, layer, hidden, pos, vis):
            text = torch.arange(int(vis.max()) + 1, hidden.shape[1], device=vis.device)  # prompt after the image
            att = ad.llm_attention(layer, hidden, pos, text, vis, rope=True, causal=True)  # [H, Q, V]
            scores, n, heads = adaptive_keep(att, self.top_heads, self.lam)
            state.info.update(adaptive_kept=n, heads=heads)
            return topk_rows(scores, n)

        state.info["layers"] = [k]
        with PrefillDrop(state, [k], select).installed():
            yield
        if self.stages != "3":
            state.info["stage_kept"] = [round(sum(float(m.sum()) for m in stage)) for stage in state.stage_maps]
            # per encoder: per stage, per frame, its map on its own grid; and its kept tokens per stage
            state.info["encoder_maps"] = {e.name: [[m[e.offset:e.offset + e.size].reshape(e.grid).tolist()
                                                    for m in stage] for stage in state.stage_maps] for e in ad.encoders}
            state.info["encoder_kept"] = {e.name: [round(sum(float(m[e.offset:e.offset + e.size].sum()) for m in stage))
                                                   for stage in state.stage_maps] for e in ad.encoders}

    def encode(self, state: RunState) -> None:
        if self.stages == "3":
            return super().encode(state)
        ad = state.adapter
        ranks = getattr(ad, "encoder_ranks", None)
        if not ranks or len(ranks) != len(ad.encoders):
            raise RequestError("METEOR stage 1 splits its budget by each encoder's feature rank, and this model has "
                               "none stored: python -m backends.tiny.train_2enc --ranks FOLDER measures them")
        sizes = [e.size for e in ad.encoders]
        budgets = rank_budgets(budget(self.encoder_keep, sum(sizes)), ranks, sizes)
        state.info.update(encoder_budgets={e.name: b for e, b in zip(ad.encoders, budgets)},
                          encoder_ranks={e.name: r for e, r in zip(ad.encoders, ranks)},
                          stage_names=["1: inside each encoder", "2: across encoders", "3: in the LLM"])
        stage1(state, budgets)
        state.stage_maps.append([f.kept_map() for f in state.frames])

    def reduce(self, state: RunState) -> None:
        if self.stages != "3":
            stage2(state, self.fusion_keep)
            state.stage_maps.append([f.kept_map() for f in state.frames])
