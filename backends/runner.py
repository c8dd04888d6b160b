"""The runner: executes one `RunRequest` on a loaded model and measures it honestly.

Stages, each timed with the device synchronised before the clock is read:
  preprocess (processor) -> vision (tower, method's pre-LLM reduction, projector)
  -> prefill (LLM over the prompt, first token) -> decode (greedy loop, one token per step).
`warmup` untimed runs come first; timings are the median of `repeats` timed runs. Decoding is a manual
greedy loop with explicit position ids, so it continues from the original prompt length whatever the
method did to the sequence or to the per-layer cache lengths (`generate()` would re-derive them wrongly).
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack

import torch
from transformers import DynamicCache

from backends import media, turns
from backends.measure import MAX_REPEATS, STABLE, cache_bytes, clock, flop_ideal, peak_memory, timed_runs
from backends.models import LoadedModel
from backends.settings import Settings
from backends.state import RunState
from backends.types import Memory, RunRequest, RunResult, Timings, VisualTokens, check_follow_ups
from methods import registry


def build_sequence(state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """Splice the (possibly reduced) visual tokens into the text embeddings.

    Returns inputs_embeds [1, L', D] and position_ids [1, L']. Positions are contiguous ("reindex") or keep
    each token's original slot ("original"); generation continues from `state.next_position` either way.
    """
    ad = state.adapter
    ids = state.input_ids[0]
    text = ad.embed_tokens(state.input_ids)[0]  # [L, D]
    slots = ad.image_positions(state.input_ids)
    n = ad.tokens_per_image
    feats = ad.project_tokens(torch.cat([f.hidden for f in state.frames]),  # [V, D]: each encoder's projector
                              torch.cat([f.index for f in state.frames])).to(text.dtype)
    suffix, m = ad.frame_suffix(), ad.suffix_tokens
    pieces, pos, vis, cursor, off, length = [], [], [], 0, 0, 0
    for f, frame in enumerate(state.frames):
        first = int(slots[f * (n + m)])  # each frame's N (+ suffix) placeholders are contiguous
        k = frame.hidden.shape[0]
        pieces += [text[cursor:first], feats[off:off + k]]
        pos += [torch.arange(cursor, first), first + frame.index.to(torch.long)]
        length += first - cursor
        vis.append(torch.arange(length, length + k))
        length += k
        off += k
        if m:  # e.g. OneVision's newline token: never pruned, at its original slot
            pieces.append(suffix.to(text.dtype))
            pos.append(torch.arange(first + n, first + n + m))
            length += m
        cursor = first + n + m
    pieces.append(text[cursor:])
    pos.append(torch.arange(cursor, ids.shape[0]))
    embeds = torch.cat(pieces)[None]
    if state.positions == "original":
        position_ids = torch.cat(pos)[None]
        state.next_position = int(ids.shape[0])
    else:
        position_ids = torch.arange(embeds.shape[1])[None]
        state.next_position = int(embeds.shape[1])
    state.visual_slots = torch.cat(vis)
    state.seq_len = int(embeds.shape[1])
    return embeds, position_ids.to(embeds.device)


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.processor.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _once(lm: LoadedModel, method, frames: list, prompt: str, max_new: int, seed: int,
          follow_ups: tuple[str, ...] = ()) -> dict:
    """One full run (every turn of the conversation). Returns turn 1's answer, token ids, stage times (s),
    memory and the final state, and each later turn's under "more" (see backends/turns.py)."""
    ad, dev = lm.adapter, lm.device
    eos = _eos_ids(lm)
    torch.manual_seed(seed)
    with ExitStack() as hooks, torch.inference_mode():  # the method's hooks stay live across every turn
        with peak_memory(dev) as peak:
            t0 = clock(dev)
            inputs = ad.preprocess(frames, prompt)
            t1 = clock(dev)
            pv = inputs["pixel_values"].to(dev, lm.dtype if lm.dtype.is_floating_point else None)
            state = RunState(ad, inputs["input_ids"].to(dev), pv, prompt, seed=seed)
            hooks.enter_context(method.apply(state))
            method.encode(state)
            method.reduce(state)
            embeds, position_ids = build_sequence(state)
            t2 = clock(dev)
            cache = state.cache = DynamicCache(config=ad.text_config)
            state.query = torch.arange(int(state.visual_slots.max()) + 1, state.seq_len, device=dev)
            mask = torch.ones(1, embeds.shape[1], dtype=torch.long, device=dev)  # explicit: gapped positions
            out = ad.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                    cache=cache, use_cache=True)
            tok, p = _pick(ad.lm_head(out.last_hidden_state[:, -1]))
            t3 = clock(dev)
            kv_prefill = cache_bytes(cache)
            tokens, probs, nxt = [tok], [p], state.next_position
            while len(tokens) < max_new and tok not in eos:
                emb = ad.embed_tokens(torch.tensor([[tok]], device=dev))
                out = ad.language_model(inputs_embeds=emb, position_ids=torch.tensor([[nxt]], device=dev),
                                        cache=cache, use_cache=True)
                tok, p = _pick(ad.lm_head(out.last_hidden_state[:, -1]))
                tokens.append(tok)
                probs.append(p)
                nxt += 1
            t4 = clock(dev)
            kv_end = cache_bytes(cache)
        answer_ids = [t for t in tokens if t not in eos]
        answer = lm.processor.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        seen, more = turns.snapshot(state), []
        for k in range(len(follow_ups)):  # turn k + 2 on the cache this method left
            prev = more[-1] if more else {"tokens": tokens, "answer": answer, "next": nxt}
            more.append(turns.follow_up(lm, state, [prompt, *follow_ups[:k + 1]],
                                        [answer] + [m["answer"] for m in more], prev["tokens"][-1], prev["next"],
                                        max_new, eos))
            more[-1]["seen"] = turns.snapshot(state)
    return {"tokens": tokens, "answer": answer, "seen": seen, "more": more,
            "times": (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), "peak": peak, "kv": (kv_prefill, kv_end),
            "state": state, "probs": [q for t, q in zip(tokens, probs) if t not in eos] or probs}


def _pick(logits: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Greedy token of logits [1, vocab] and its softmax probability (a 0-d tensor: no extra device sync)."""
    tok = logits.argmax(-1)
    return int(tok), torch.exp(logits[0, tok[0]] - torch.logsumexp(logits[0], -1))


def _timings(times: tuple, n_out: int) -> Timings:
    """Stage times in seconds (preprocess, vision, prefill, decode, total) as `Timings` in ms."""
    pre, vis, pf, dec, tot = (x * 1000 for x in times)
    return Timings(preprocess=pre, vision=vis, prefill=pf, ttft=pre + vis + pf, decode=dec,
                   per_token=dec / max(1, n_out - 1), total=tot)


def run(req: RunRequest, lm: LoadedModel, settings: Settings, frames: list | None = None) -> RunResult:
    """Run one request. Bad input raises `RequestError`; callers turn other exceptions into `ok: false`."""
    method = registry.build(req.method)
    prompt = media.check_prompt(req.prompt, settings)
    frames = frames if frames is not None else media.frames_of(req.media, settings)
    gen = req.generation
    seed = int(getattr(method, "seed", 0))
    ups = tuple(media.check_prompt(q, settings) for q in check_follow_ups(req.follow_ups, settings.max_prompt_chars))
    turns.check_context(lm.processor, getattr(lm.adapter.text_config, "max_position_embeddings", None),
                        int(lm.adapter.preprocess(frames, prompt)["input_ids"].shape[1]), [prompt, *ups],
                        gen.max_new_tokens, len(frames))
    started = time.time()
    for _ in range(gen.warmup):
        _once(lm, method, frames, prompt, min(2, gen.max_new_tokens), seed, ups)
    runs = timed_runs(lambda: _once(lm, method, frames, prompt, gen.max_new_tokens, seed, ups), gen)
    last, state = runs[-1], runs[-1]["state"]
    ids = [[r["tokens"], *(m["tokens"] for m in r["more"])] for r in runs]
    differ = sum(i != ids[-1] for i in ids)
    # CPU kernels repeat bit for bit, so a difference there is a bug (state leaking between runs). CUDA kernels may
    # not (reduction order), and a near-tie between two tokens then flips: report it with the answer, don't fail.
    if differ and lm.device.type != "cuda":
        raise RuntimeError("repeated runs gave different tokens: the run is not deterministic")
    n_out = len(last["tokens"])
    timings = _timings(tuple(statistics.median(r["times"][i] for r in runs) for i in range(5)), n_out)
    probs = [float(p) for p in last["probs"]]
    per_layer = last["seen"]["per_layer"]  # turn 1's (a KV method may change them at later turns)
    peak = max(r["peak"].bytes for r in runs)
    return RunResult(
        method=method.name, params=method.params(), ok=True, answer=last["answer"], output_tokens=n_out,
        output_ids=list(last["tokens"]),
        visual_tokens=VisualTokens(input=state.visual_in, kept=last["seen"]["kept"], per_layer=per_layer,
                                   effective=sum(per_layer) / len(per_layer)),
        timings_ms=timings, timings_ms_all=[_timings(r["times"], n_out) for r in runs],
        confidence={"mean": round(statistics.fmean(probs), 4), "min": round(min(probs), 4)} if probs else {},
        flop_ideal_speedup=round(flop_ideal(lm.adapter, state, per_layer if state.per_layer_at == "prefill" else
                                            [state.visual_kept] * len(per_layer), n_out, len(frames)), 3),
        memory=Memory(peak_bytes=peak, peak_kind=last["peak"].kind, kv_cache_bytes=last["kv"][1],
                      kv_cache_bytes_prefill=last["kv"][0]),
        kept_map=last["seen"]["kept_map"],
        stage_maps=[[lm.adapter.map_rows(m) for m in stage] for stage in state.stage_maps],
        info={"positions": state.positions, "seq_len": state.seq_len, **state.info,
              **({"runs_with_other_tokens": f"{differ} of {len(runs)}"} if differ else {})},
        measurement=measurement(lm, gen, started, len(runs)),
        turns=turns.turn_list(runs, [prompt, *ups], state.visual_in, _timings),
        index=req.index,
    )


def measurement(lm: LoadedModel, gen, started: float, timed: int) -> dict:
    """How the numbers were taken, attached to every result."""
    import transformers

    dev = lm.device
    return {
        "warmup_runs": gen.warmup, "timed_runs": timed, "statistic": "median",
        "spread": "min-max over the timed runs (each run's timings in timings_ms_all)",
        "repeat_rule": f"at least {gen.repeats} timed run(s); more, up to {MAX_REPEATS}, while the totals spread "
                       f"over {STABLE:.0%} of their median, within {gen.repeat_budget_s:g} s of timed runs",
        "confidence": "softmax probability of each greedy answer token (EOS excluded): mean and min",
        "flop_ideal": "computed: dense + attention FLOPs from the model config and this run's per-layer "
                      "visual-token counts, baseline / this run; vision encoder counted for both",
        "sync": "torch.cuda.synchronize before every clock read" if dev.type == "cuda" else "none needed (CPU)",
        "clock": "time.perf_counter", "decoding": "greedy, batch 1, manual KV-cache loop",
        "attn_implementation": lm.adapter.attn_implementation, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(lm.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "started_unix": round(started, 3),
    }
