"""TwigVLM's self-speculative decoding, installed as hooks around the runner's own greedy loop.

The draft model is base layers 0..K-1 + the twig + its head; the base verifies with layers K..L-1. One round,
started when the runner feeds token t at position p:
  1. draft: t, then each drafted token, goes through layers 0..K-1 (their cache entries are the base's own) and
     the twig (its own cache); the twig's greedy token is drafted while its probability is >= `threshold`, at most
     `max_draft` tokens (the paper: 5 and 0.6);
  2. verify: layers K..L-1 run once over the k + 1 states [t, d1..dk] (each layer masked to its own cache
     length: pruning leaves layers uneven), then the norm and LM head;
  3. accept: the longest prefix of drafts equal to the base's greedy tokens (lossless under greedy decoding).
The runner keeps calling the language model one token at a time: the accepted tokens' final states are served
from the round (no layer runs), and their cache entries are handed to the cache as each is fed, so the cache
always holds exactly what the runner has fed (KV bytes, follow-up turns and the method's other hooks see the
usual state). A call that is not the next accepted token (a new round, a follow-up prefill) drops what the runner
never consumed. Multi-token forwards (the prompt, follow-ups) run the base as usual; a pre-hook on layer K feeds
their states to the twig so its cache covers every fed token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from backends.tiny.twig import Twig, causal_mask


class SelfSpeculation:
    def __init__(self, adapter, twig: Twig, max_draft: int, threshold: float, eos: set[int]):
        self.ad, self.twig, self.k = adapter, twig, twig.k
        self.max_draft, self.threshold, self.eos = max_draft, threshold, eos
        self.twig_cache = DynamicCache()
        self.twig_end = 0  # positions < twig_end are in the twig's cache ...
        self.pending: list[tuple[torch.Tensor, int]] = []  # ... and these (state [1, 1, D], position) are not yet
        self.served: list[tuple[int, int, torch.Tensor, list]] = []  # (token, position, final state, KV per layer)
        self.last_ids: torch.Tensor | None = None
        self.on_prompt = None  # callback(twig last-layer input, position embeddings) at the multimodal prefill
        self.stats = {"rounds": 0, "drafted": 0, "accepted": 0, "emitted": 0, "shallow_calls": 0, "deep_calls": 0,
                      "twig_calls": 0}
        self.in_round = False

    # ---- the base's parts ------------------------------------------------------------------------------
    def _pe(self, h: torch.Tensor, positions: list[int]):
        return self.ad.rotary_emb(h, torch.tensor([positions], device=h.device))

    def _layers(self, h: torch.Tensor, positions: list[int], cache, lo: int, hi: int) -> torch.Tensor:
        pe = self._pe(h, positions)
        for i in range(lo, hi):
            past = cache.layers[i].keys.shape[-2] if i < len(cache.layers) and cache.layers[i].keys is not None else 0
            h = self.ad.layers[i](h, attention_mask=causal_mask(h.shape[1], past, h.device), position_embeddings=pe,
                                  position_ids=torch.tensor([positions], device=h.device), cache=cache, use_cache=True)
        return h

    def _feed_twig(self, h: torch.Tensor, positions: list[int], keep_last_input: bool = False) -> torch.Tensor:
        """Twig states for h [1, q, D] at `positions`, after any pending states (which it feeds first)."""
        if self.pending:
            h = torch.cat([p[0] for p in self.pending] + [h], 1)
            positions = [p[1] for p in self.pending] + positions
            self.pending = []
        out = self.twig(h, self._pe(h, positions), self.twig_cache, keep_last_input=keep_last_input)
        self.twig_end = positions[-1] + 1
        return out

    def _rewind(self, position: int) -> None:
        """Forget everything at or after `position` that the runner never fed (unserved drafts, twig entries)."""
        self.served = []
        extra = self.twig_end - position
        if extra > 0:
            for layer in self.twig_cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :-extra], layer.values[:, :, :-extra]
            self.twig_end = position
        self.pending = [p for p in self.pending if p[1] < position]

    # ---- one round -------------------------------------------------------------------------------------
    def _round(self, tok: int, pos: int, cache) -> torch.Tensor:
        dev, n_layers = self.ad.lm_head.weight.device, len(self.ad.layers)
        inputs, states, drafts, fed = [tok], [], [], 0
        while True:
            h = self.ad.embed_tokens(torch.tensor([[inputs[-1]]], device=dev))
            states.append(self._layers(h, [pos + len(states)], cache, 0, self.k))
            self.stats["shallow_calls"] += self.k
            if len(drafts) == self.max_draft:
                break  # the last draft needs its shallow state for verification, not a twig step
            g = self._feed_twig(states[-1], [pos + len(states) - 1])
            fed = len(states)
            self.stats["twig_calls"] += self.twig.t
            probs = self.twig.logits(g[:, -1]).float().softmax(-1)[0]
            p, d = probs.max(0)
            if float(p) < self.threshold:
                break
            drafts.append(int(d))
            inputs.append(int(d))
            if int(d) in self.eos:
                states.append(self._layers(self.ad.embed_tokens(torch.tensor([[int(d)]], device=dev)),
                                           [pos + len(states)], cache, 0, self.k))
                self.stats["shallow_calls"] += self.k
                break
        hs = torch.cat(states, 1)  # [1, k + 1, D]
        final = self.ad.language_model.norm(self._layers(hs, list(range(pos, pos + hs.shape[1])), cache, self.k,
                                                         n_layers))
        self.stats["deep_calls"] += n_layers - self.k
        verified = self.ad.lm_head(final)[0].argmax(-1).tolist()  # base's greedy token after each input
        a = 0
        while a < len(drafts) and drafts[a] == verified[a]:
            a += 1
        self.stats.update(rounds=self.stats["rounds"] + 1, drafted=self.stats["drafted"] + len(drafts),
                          accepted=self.stats["accepted"] + a)
        # cache: drop the rejected tail, lift the accepted drafts' entries out until the runner feeds them
        rejected, held = len(states) - 1 - a, []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            n = keys.shape[-2] - rejected
            held.append((keys[:, :, n - a:n], values[:, :, n - a:n]))
            layer.keys, layer.values = keys[:, :, :n - a], values[:, :, :n - a]
        self.served = [(drafts[i], pos + 1 + i, final[:, i + 1:i + 2], [(k[:, :, i:i + 1], v[:, :, i:i + 1])
                                                                           for k, v in held]) for i in range(a)]
        self._rewind_twig(pos + a + 1, fed, states, pos)
        return final[:, :1]

    def _rewind_twig(self, end: int, fed: int, states: list, pos: int) -> None:
        """Keep the twig's entries for accepted positions (< end); accepted states it has not seen go pending."""
        extra = self.twig_end - end
        if extra > 0:
            for layer in self.twig_cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :-extra], layer.values[:, :, :-extra]
            self.twig_end = end
        self.pending += [(states[i], pos + i) for i in range(fed, end - pos)]

    def _serve(self, cache) -> torch.Tensor:
        _, _, state, kv = self.served.pop(0)
        for layer, (k, v) in zip(cache.layers, kv):
            layer.keys, layer.values = torch.cat([layer.keys, k], -2), torch.cat([layer.values, v], -2)
        return state

    # ---- hooks -----------------------------------------------------------------------------------------
    def forward(self, original, *args, input_ids=None, inputs_embeds=None, position_ids=None, cache=None, **kw):
        """The language model's forward while installed: single tokens are served or start a round."""
        x = input_ids if input_ids is not None else inputs_embeds
        if cache is None or x.shape[1] != 1 or args:
            if position_ids is not None and cache is not None and cache.get_seq_length() > 0:
                self._rewind(int(position_ids[0, 0]))
            return original(*args, input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
                            cache=cache, **kw)
        if input_ids is not None:
            tok = int(input_ids[0, 0])
        elif self.last_ids is not None and torch.equal(self.ad.embed_tokens(self.last_ids), inputs_embeds):
            tok = int(self.last_ids[0, 0])
        else:
            raise RuntimeError("twigvlm: a decode step fed embeddings of no known token (cannot draft from it)")
        pos = int(position_ids[0, -1]) if position_ids is not None else cache.get_seq_length()
        self.stats["emitted"] += 1  # tokens the runner receives (a round's tokens past an EOS never count)
        if self.served and self.served[0][:2] == (tok, pos):
            state = self._serve(cache)
        else:
            self._rewind(pos)
            self.in_round = True
            try:
                state = self._round(tok, pos, cache)
            finally:
                self.in_round = False
        return BaseModelOutputWithPast(last_hidden_state=state, cache=cache)

    def _layer_k_pre(self, module, args, kwargs):
        """A multi-token forward reaches layer K: feed its states to the twig (the prompt, a follow-up)."""
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[1] > 1 and not self.in_round:  # a round's verification pass is not a prompt
            pos = kwargs["position_ids"][0].tolist()
            self._feed_twig(h, pos, keep_last_input=self.on_prompt is not None)
            if self.on_prompt is not None:
                self.on_prompt(self.twig.last_input, kwargs["position_embeddings"])
                self.on_prompt = None
        return None

    @contextmanager
    def installed(self) -> Iterator[None]:
        lm = self.ad.language_model
        original = lm.forward
        handles = [self.ad.embed_tokens.register_forward_hook(lambda m, a, out: setattr(self, "last_ids", a[0])),
                   self.ad.layers[self.k].register_forward_pre_hook(self._layer_k_pre, with_kwargs=True)]
        lm.forward = lambda *a, **k: self.forward(original, *a, **k)
        try:
            yield
        finally:
            lm.__dict__.pop("forward", None)
            for h in handles:
                h.remove()

    def report(self) -> dict:
        s, n_layers = self.stats, len(self.ad.layers)
        plain = s["emitted"] * n_layers  # layer forwards plain greedy decoding spends on the same tokens
        spent = s["shallow_calls"] + s["deep_calls"]
        return {"acceptance_rate": round(s["accepted"] / s["drafted"], 4) if s["drafted"] else 0.0,
                "tokens_per_base_pass": round(s["emitted"] / s["rounds"], 3) if s["rounds"] else 0.0,
                "base_layer_forwards_saved": round(1 - spent / plain, 4) if plain else 0.0,
                "draft_rounds": s["rounds"], "drafted": s["drafted"], "accepted": s["accepted"],
                "twig_layer_forwards": s["twig_calls"]}
