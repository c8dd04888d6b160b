"""Honest clocks and memory: synchronise the device before every clock read; peak memory over a span.

On CUDA the peak is the allocator's (`max_memory_allocated`) growth over the span. On CPU it is the
process's peak resident set size growth: Linux lets a process reset its high-water mark by writing "5" to
/proc/self/clear_refs, so VmHWM afterwards is the true peak within the span (not a sampled estimate). The
heap is trimmed first (malloc_trim), else a run reuses memory an earlier run freed and shows no growth; on a
small model the growth is still only a few hundred KB, within the allocator's noise.

Also here: how many timed runs to take (`timed_runs`: a minimum, then more while the totals are noisy,
within a time budget) and the FLOP-ideal speedup (`flop_ideal`), a count from the model's config and a run's
per-layer visual-token counts that says what a token selection could save at best; it is computed, never
measured, and the page labels it so.
"""

from __future__ import annotations

import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_STATUS = "/proc/self/status"
MAX_REPEATS = 20  # timed runs at most, however noisy the clock
STABLE = 0.10  # the totals' (max - min) / median under which more timed runs are not worth taking


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Seconds, after the device has finished all queued work."""
    sync(device)
    return time.perf_counter()


def _status_kb(field: str) -> int:
    with open(_STATUS) as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def _trim_heap() -> None:
    """Return freed heap memory to the OS first (glibc keeps it otherwise), so the run's own allocations show
    up as RSS growth instead of silently reusing what an earlier run freed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Peak:
    bytes: int = 0
    kind: str = ""


@contextmanager
def peak_memory(device: torch.device):
    """Yields a `Peak` that holds, after the block, the memory growth at its highest point within it."""
    peak = Peak()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield peak
        sync(device)
        peak.bytes = max(0, torch.cuda.max_memory_allocated(device) - base)
        peak.kind = "CUDA allocator peak growth (torch.cuda.max_memory_allocated)"
        return
    _trim_heap()
    exact = _reset_hwm()
    base = _status_kb("VmRSS") if exact else _status_kb("VmHWM")
    yield peak
    peak.bytes = max(0, _status_kb("VmHWM") - base) * 1024
    peak.kind = ("process peak RSS growth (heap trimmed, VmHWM reset via /proc/self/clear_refs)" if exact
                 else "process peak RSS growth over its lifetime high-water mark (VmHWM not resettable)")


def cache_bytes(cache) -> int:
    """Bytes held by a transformers `Cache` (keys + values of every layer)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def llm_flops(text_config, head_dim: int, text_tokens: int, per_layer: list[int], output_tokens: int,
              frozen_kv_tokens: int = 0) -> float:
    """Dense matmul + attention FLOPs of the LLM for one answer (a count from the config, not a measurement).

    Prefill: each layer i processes `text_tokens + per_layer[i]` tokens (2 FLOPs per weight per token; causal
    attention about half of T^2 for QK^T and AV). Decode: `output_tokens - 1` steps attend over the mean
    context; the LM head runs once per output token. `frozen_kv_tokens` counts tokens whose layer is skipped
    but whose keys/values are still computed (ShortV-style freezing)."""
    d, kv = text_config.hidden_size, text_config.num_key_value_heads * head_dim
    per_tok = 2 * (2 * d * d + 2 * d * kv + 3 * d * text_config.intermediate_size)  # q, o, k, v, gate/up/down
    total = 0.0
    for v in per_layer:
        t = text_tokens + v
        total += per_tok * t + 2 * t * t * d
    total += frozen_kv_tokens * 4 * d * kv
    ctx = text_tokens + sum(per_layer) / max(1, len(per_layer))
    steps = max(0, output_tokens - 1)
    return total + steps * len(per_layer) * (per_tok + 4 * ctx * d) + output_tokens * 2 * d * text_config.vocab_size


def vision_flops(vision_config, tokens: int, depth: int, frames: int) -> float:
    """FLOPs of `depth` vision encoder layers over `tokens` tokens per frame (the same for every method)."""
    h, t = vision_config.hidden_size, tokens
    return frames * depth * (2 * t * (4 * h * h + 2 * h * vision_config.intermediate_size) + 4 * t * t * h)


def timed_runs(once, gen) -> list[dict]:
    """`gen.repeats` timed runs, then more (up to MAX_REPEATS) while the totals spread more than STABLE of
    their median and `gen.repeat_budget_s` of timed runs is not spent."""
    runs: list[dict] = []
    while True:
        totals = [r["times"][4] for r in runs]
        if len(runs) >= gen.repeats:
            spread = (max(totals) - min(totals)) / max(statistics.median(totals), 1e-9)
            if len(runs) >= MAX_REPEATS or sum(totals) >= gen.repeat_budget_s or spread <= STABLE:
                return runs
        runs.append(once())


def flop_ideal(ad, state, per_layer: list[int], n_out: int, n_frames: int) -> float:
    """Baseline FLOPs / this run's FLOPs from the model's config and this run's per-layer visual-token counts
    (what the selection saves at best on this model; computed, not measured)."""
    text = state.seq_len - state.visual_kept
    vc = ad.vision_config
    vis = vision_flops(vc, (vc.image_size // vc.patch_size) ** 2 + ad.num_prefix_tokens, ad.feature_depth, n_frames)
    frozen = len(state.info.get("frozen_layers") or []) * state.visual_kept
    base = llm_flops(ad.text_config, ad.head_dim, text, [state.visual_in] * len(per_layer), n_out)
    this = llm_flops(ad.text_config, ad.head_dim, text, per_layer, n_out, frozen)
    return (vis + base) / (vis + this)
