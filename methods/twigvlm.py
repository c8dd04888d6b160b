"""`twigvlm` (TwigVLM, ICCV 2025): a trained twig on the early layers prunes visual tokens and drafts tokens.

Rule (paper; official code MILVLG/twigvlm): the frozen base runs layers 0..K-1; the twig (T decoder layers grown
there, trained with the base frozen: backends/tiny/twig.py) runs on the same states, and its last layer's attention
from the last prompt token (head mean; softmax over every key, as its eager layer computes) ranks the visual tokens.
Base layers K..K_f-1 keep the top R, with R = ceil((L x R_avg - K x M) / (K_f - K)) for the average budget
R_avg = keep x M (M visual tokens, L decoder layers), and FinalWipe drops every visual token from layer K_f on
(paper: 24 of 32, scaled here). Survivors keep their position ids. Decoding is self-speculative
(methods/_speculate.py): the twig drafts up to `max_draft` tokens while its probability stays >= `threshold`,
layers K..L-1 verify them in one pass, and the longest prefix equal to the base's greedy tokens is accepted, so the
answer is the base's own (with pruning on, the pruned base's).
Twigs: the built-in model's `twig.safetensors` beside its weights (python -m backends.tiny.train_twig), or the
official LLaVA-1.5-7B K2-T3 twig folder through `twig_path` (its key names, mapped as the official loader does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from backends.state import RunState
from backends.tiny.twig import Twig, TwigError, load_twig, twig_file
from backends.types import RequestError
from methods._llm import PrefillDrop, scaled_layer
from methods._speculate import SelfSpeculation
from methods.base import Method
from methods.registry import register

_TWIGS: dict[tuple, Twig] = {}  # loaded twigs, per model and file version


def retained(keep: float, m: int, n_layers: int, k: int, wipe: int) -> int:
    """The paper's R: visual tokens base layers K..K_f-1 keep so that the mean over all L layers is keep x M
    (M tokens in layers < K, none from K_f). Clipped to [0, M]: a budget under K x M / L is spent by layer K."""
    r = math.ceil((n_layers * keep * m - k * m) / (wipe - k) - 1e-9)
    return max(0, min(m, r))


def twig_for(model, twig_path: str) -> Twig:
    path = twig_file(getattr(model.config, "_name_or_path", None), twig_path)
    key = (id(model), str(path), path.stat().st_mtime if path.is_file() else 0.0)
    if key not in _TWIGS:
        _TWIGS.clear()  # one model per worker: keep the latest twig only
        _TWIGS[key] = load_twig(model, path)
    return _TWIGS[key]


@register
@dataclass
class TwigVLM(Method):
    name = "twigvlm"
    stage = "in_llm"
    paper = "TwigVLM (ICCV 2025)"
    summary = ("A small trained twig on the first K layers picks the visual tokens the rest of the LLM keeps (its "
               "attention from the last prompt token), a late layer drops them all, and the twig drafts tokens "
               "that the base verifies in one pass (self-speculative decoding: the base's own answer, faster).")
    needs = ("a twig trained for the model (built-in: shipped beside it; LLaVA-1.5-7B: the official K2-T3 twig via "
             "twig_path)")
    fidelity = ("the paper's rules (R formula, FinalWipe, linear draft of up to 5 stopping below 0.6, greedy longest "
                "prefix); the official code's newer token-tree drafting is not reproduced. Built-in twig: K=1, T=2 of "
                "8 layers (paper: K=2, T=3 of 32), trained here (python -m backends.tiny.train_twig)")
    budget_field = "keep"
    rope = "original (tokens keep their position ids)"
    keep_all = {"prune": False}  # speculation alone is lossless: the baseline's tokens exactly

    keep: float = 0.3333  # R_avg = 192 of 576 tokens, the paper's 99.2% point (64 and 128 also reported)
    prune: bool = True
    speculate: bool = True
    max_draft: int = 5
    threshold: float = 0.6  # stop drafting when the twig's greedy probability falls below this
    wipe_layer: int = -1  # FinalWipe layer K_f; -1: the paper's 24 of 32 scaled to this model; 0: no wipe
    twig_path: str = ""  # an official twig folder (model.safetensors); empty: the model folder's twig.safetensors

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.max_draft <= 16:
            raise RequestError(f"{self.name}: max_draft must be in 1..16, got {self.max_draft}")
        if not 0.0 <= self.threshold <= 1.0:
            raise RequestError(f"{self.name}: threshold must be in [0, 1], got {self.threshold}")
        if self.wipe_layer < -1:
            raise RequestError(f"{self.name}: wipe_layer must be -1 (scaled), 0 (none) or a layer index")
        if self.twig_path and not os.path.exists(self.twig_path):
            raise RequestError(f"{self.name}: twig_path {self.twig_path} does not exist")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        if not (self.prune or self.speculate):
            yield
            return
        ad = state.adapter
        try:
            twig = twig_for(ad.model, self.twig_path)
        except TwigError as e:
            raise RequestError(f"{self.name}: {e}") from None
        n, k = len(ad.layers), twig.k
        wipe = n if self.wipe_layer == 0 else min(n, scaled_layer(self.wipe_layer, 24, 32, n))
        if wipe <= k:
            raise RequestError(f"{self.name}: wipe_layer {wipe} must come after the twig's layer K={k}")
        state.info.update(twig={"K": k, "T": twig.t}, wipe_layer=wipe if wipe < n else None,
                          layers_note=f"paper: K=2, T=3, wipe at 24 of 32 layers; this model has {n}")
        with ExitStack() as stack:
            spec = None
            if self.speculate:
                eos = ad.model.generation_config.eos_token_id
                eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
                spec = SelfSpeculation(ad, twig, self.max_draft, self.threshold, eos)
                stack.enter_context(spec.installed())
            if self.prune:
                self._prune(state, twig, wipe, spec, stack)
            try:
                yield
            finally:
                if spec is not None:
                    state.info.update(spec.report(), speculation=f"draft <= {self.max_draft} while p >= "
                                      f"{self.threshold}; base_layer_forwards_saved counts decoder-layer calls "
                                      "against plain greedy decoding of the same tokens")

    def _prune(self, state: RunState, twig: Twig, wipe: int, spec, stack: ExitStack) -> None:
        """Twig-guided pruning at layer K and FinalWipe at `wipe` (< L), on the first turn's prefill."""
        ad, n, k = state.adapter, len(state.adapter.layers), twig.k
        stages = [k, wipe] if wipe < n else [k]
        drop = PrefillDrop(state, stages, lambda s, i, h, pe, vis: (torch.arange(vis.numel(), device=vis.device)
                                                                     if s == 0 else vis.new_zeros(0)))

        def choose(last_input: torch.Tensor, pe) -> None:  # at layer K: the twig's last layer ranks the tokens
            vis = state.visual_slots.to(last_input.device)
            m = int(vis.numel())
            r = retained(self.keep, m, n, k, wipe)
            score = twig.last_layer_attention(last_input, pe, vis)
            rows = torch.ones(last_input.shape[1], dtype=torch.bool, device=vis.device)
            rows[vis] = False
            rows[vis[score.topk(r).indices]] = True
            drop.pending = rows.nonzero().flatten()
            state.info.update(retained=r, budget=f"R = ceil(({n} x {self.keep:g} x {m} - {k} x {m}) / ({wipe} - {k}))"
                              f" = {r}, clipped to [0, {m}]")

        if spec is not None:
            spec.on_prompt = choose  # its layer-K hook runs the twig anyway (to fill the twig's cache)
        else:
            def pre(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                if h.shape[1] > 1 and state.turn == 0 and drop.prefill:
                    twig(h, kwargs["position_embeddings"], keep_last_input=True)
                    choose(twig.last_input, kwargs["position_embeddings"])
                return None

            handle = ad.layers[k].register_forward_pre_hook(pre, with_kwargs=True)
            stack.callback(handle.remove)
        stack.enter_context(drop.installed())
