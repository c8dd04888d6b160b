"""Honest clocks and memory: synchronise the device before every clock read; peak memory over a span.

On CUDA the peak is the allocator's (`max_memory_allocated`) growth over the span. On CPU it is the
process's peak resident set size growth: Linux lets a process reset its high-water mark by writing "5" to
/proc/self/clear_refs, so VmHWM afterwards is the true peak within the span (not a sampled estimate). The
heap is trimmed first (malloc_trim), else a run reuses memory an earlier run freed and shows no growth; on a
small model the growth is still only a few hundred KB, within the allocator's noise.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_STATUS = "/proc/self/status"


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
