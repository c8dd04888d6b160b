"""Conversations: follow-up questions answered on the KV cache each method left, as a chat server would.

Turn 1 is the runner's usual run (multimodal prefill, greedy decode). Turn k > 1 prefills only its new tokens on
top of the same cache, whatever the method did to it (pruned, compressed or per-layer uneven), then decodes:

  new tokens = the previous turn's last generated token (never fed while decoding) + an end-of-sequence token
               if that turn was cut at max_new_tokens, closing it + the text the chat template adds for the turn.

That text is the difference between the model's own chat template rendered for the dialogue so far (user and
assistant turns, `add_generation_prompt=False`) and for the dialogue with the new question
(`add_generation_prompt=True`), so it is right for any template that renders a dialogue as a growing prefix,
whether or not it renders assistant turns. Positions continue from the previous turn's; each decoder layer
gets its own causal mask sized to its own cache length (methods leave layers with different lengths).
Follow-up tokens enter as `input_ids`, never `inputs_embeds`: hooks that act on the multimodal prefill (it
carries `inputs_embeds`) stay out of follow-ups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from backends.measure import cache_bytes, clock, peak_memory
from backends.types import RequestError


def dialogue(prompts: list[str], answers: list[str], n_images: int) -> list[dict]:
    """The chat messages of a conversation: user turns `prompts` (the images go with the first), assistant
    turns `answers` (one fewer than prompts, or as many)."""
    msgs = []
    for i, q in enumerate(prompts):
        images = [{"type": "image"} for _ in range(n_images)] if i == 0 else []
        msgs.append({"role": "user", "content": images + [{"type": "text", "text": q}]})
        if i < len(answers):
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
    return msgs


def increment_text(processor, prompts: list[str], answers: list[str], n_images: int) -> str:
    """Text the template adds for the last question of `prompts`, given the earlier turns and their `answers`."""
    before = processor.apply_chat_template(dialogue(prompts[:-1], answers, n_images), add_generation_prompt=False)
    after = processor.apply_chat_template(dialogue(prompts, answers, n_images), add_generation_prompt=True)
    if not after.startswith(before):
        raise RuntimeError("the chat template does not render the dialogue as a growing prefix: follow-up turns "
                           "cannot reuse the cache")
    return after[len(before):]


def new_ids(tokenizer, text: str, last_token: int, eos: int) -> list[int]:
    """Token ids a follow-up feeds: the unfed last token of the previous turn, EOS if it is not one, the text."""
    closing = [last_token] if last_token == eos else [last_token, eos]
    return closing + tokenizer(text, add_special_tokens=False)["input_ids"]


def check_context(processor, limit: int | None, prompt_len: int, prompts: list[str], max_new: int,
                  n_images: int) -> int:
    """Positions the conversation can need at most (prompt, each follow-up's text and closing tokens, every
    turn's max_new_tokens); raises `RequestError` when that exceeds the model's context `limit`."""
    need = prompt_len + len(prompts) * max_new
    for k in range(1, len(prompts)):  # answers are unknown yet: empty ones give each turn's own text
        text = increment_text(processor, prompts[:k + 1], [""] * k, n_images)
        need += len(new_ids(processor.tokenizer, text, -1, -2))
    if limit is not None and need > limit:
        raise RequestError(f"the conversation can need {need} positions ({len(prompts)} turn(s) of up to {max_new} "
                           f"new tokens after a {prompt_len}-token prompt); the model's context is {limit}: ask "
                           "fewer or shorter questions, or lower max_new_tokens")
    return need


def precheck(comparison, settings) -> None:
    """`check_context` before any model weights load (the CLI refuses with exit 2), from the model's processor
    and config alone. A model whose files are not on this machine is left to the runner's own check."""
    from transformers import AutoConfig, AutoProcessor

    from backends import media
    from backends.models import resolve

    try:
        src, _ = resolve(comparison.model)
        config = AutoConfig.from_pretrained(src, local_files_only=True)
        if config.model_type == "llava_onevision":
            from backends.onevision import load_processor

            processor = load_processor(src, config)
        else:
            processor = AutoProcessor.from_pretrained(src, local_files_only=True)
    except Exception:  # not loadable here (no network, remote code, ...): the runner checks on the worker
        return
    frames = media.frames_of(comparison.media, settings)
    prompts = [comparison.prompt, *comparison.follow_ups]
    msgs = dialogue(prompts[:1], [], len(frames))
    ids = processor(images=frames, text=processor.apply_chat_template(msgs, add_generation_prompt=True),
                    return_tensors="pt")["input_ids"]
    limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    check_context(processor, limit, int(ids.shape[1]), prompts, comparison.generation.max_new_tokens, len(frames))


@contextmanager
def per_layer_masks(ad, cache, q: int) -> Iterator[None]:
    """While `q` new tokens are prefilled on a cache: give each decoder layer the causal mask of its own cache
    length ([1, 1, q, past + q], True = attend), since the model sizes one mask from layer 0."""
    def pre(idx, module, args, kwargs):
        layer = cache.layers[idx] if idx < len(cache.layers) else None
        keys = getattr(layer, "keys", None)
        past = keys.shape[-2] if isinstance(keys, torch.Tensor) and keys.numel() else 0
        dev = (args[0] if args else kwargs["hidden_states"]).device
        mask = torch.ones(q, past + q, dtype=torch.bool, device=dev)
        mask[:, past:] = torch.ones(q, q, dtype=torch.bool, device=dev).tril()
        kwargs["attention_mask"] = mask[None, None]
        return args, kwargs

    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(i, m, a, k), with_kwargs=True)
               for i, layer in enumerate(ad.layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def greedy(ad, cache, tok: int, nxt: int, max_new: int, eos: set[int], dev) -> tuple[list[int], int]:
    """Decode after a prefill that produced `tok`: feed each token at position `nxt`, `nxt + 1`, ... until EOS or
    `max_new` tokens. Returns (all generated tokens, the first unused position); the last token is not fed."""
    tokens = [tok]
    while len(tokens) < max_new and tok not in eos:
        out = ad.language_model(input_ids=torch.tensor([[tok]], device=dev),
                                position_ids=torch.tensor([[nxt]], device=dev), cache=cache, use_cache=True)
        tok = int(ad.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
        tokens.append(tok)
        nxt += 1
    return tokens, nxt


def follow_up(lm, state, prompts: list[str], answers: list[str], last: int, nxt: int, max_new: int,
              eos: set[int]) -> dict:
    """Turn len(prompts) of the conversation on `state.cache`; the method's hooks are live (the caller holds
    `method.apply`). Returns the turn's tokens, answer, stage times (s), peak, KV bytes and next position."""
    ad, dev, tok = lm.adapter, lm.device, lm.processor.tokenizer
    eos_id = tok.eos_token_id if tok.eos_token_id in eos else min(eos)
    with peak_memory(dev) as peak:
        t0 = clock(dev)
        text = increment_text(lm.processor, prompts, answers, state.pixel_values.shape[0])
        ids = new_ids(tok, text, last, eos_id)
        q = len(ids)
        state.turn, state.query = len(prompts) - 1, torch.arange(q, device=dev)
        t1 = clock(dev)
        with per_layer_masks(ad, state.cache, q):
            out = ad.language_model(input_ids=torch.tensor([ids], device=dev),
                                    position_ids=torch.arange(nxt, nxt + q, device=dev)[None],
                                    cache=state.cache, use_cache=True)
        first = int(ad.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
        t2 = clock(dev)
        kv_prefill = cache_bytes(state.cache)
        tokens, nxt = greedy(ad, state.cache, first, nxt + q, max_new, eos, dev)
        t3 = clock(dev)
    answer = tok.decode([t for t in tokens if t not in eos], skip_special_tokens=True).strip()
    return {"tokens": tokens, "answer": answer, "times": (t1 - t0, 0.0, t2 - t1, t3 - t2, t3 - t0), "peak": peak,
            "kv": (kv_prefill, cache_bytes(state.cache)), "next": nxt}


def snapshot(state) -> dict:
    """What a turn reports about the visual tokens, taken when it ends (KV methods change it turn by turn)."""
    n_layers = len(state.adapter.layers)
    per_layer = list(state.per_layer or [state.visual_kept] * n_layers)
    return {"kept": state.visual_kept, "per_layer": per_layer, "kept_map": state.kept_maps()}


def turn_list(runs: list[dict], prompts: list[str], visual_in: int, timings) -> list:
    """Every turn of the last timed run as `Turn`s; stage times are medians over the timed runs.
    `timings(times_s, n_out)` converts a (preprocess, vision, prefill, decode, total) tuple to `Timings`."""
    import statistics

    from backends.types import Memory, Turn, VisualTokens

    last = runs[-1]
    out = []
    for k, prompt in enumerate(prompts):
        per_run = [r if k == 0 else r["more"][k - 1] for r in runs]
        t = per_run[-1]
        med = tuple(statistics.median(x["times"][i] for x in per_run) for i in range(5))
        seen = last["seen"] if k == 0 else t["seen"]
        pl = seen["per_layer"]
        out.append(Turn(
            prompt=prompt, answer=t["answer"], output_ids=list(t["tokens"]), timings_ms=timings(med, len(t["tokens"])),
            memory=Memory(peak_bytes=max(x["peak"].bytes for x in per_run), peak_kind=t["peak"].kind,
                          kv_cache_bytes=t["kv"][1], kv_cache_bytes_prefill=t["kv"][0]),
            visual_tokens=VisualTokens(input=visual_in, kept=seen["kept"], per_layer=pl, effective=sum(pl) / len(pl)),
            kept_map=seen["kept_map"]))
    return out
