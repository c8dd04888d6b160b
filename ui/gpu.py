"""Hugging Face ZeroGPU support: wrap the GPU-using entry with `spaces.GPU` when the `spaces` package is
importable (it is on a Space), and change nothing anywhere else.

On ZeroGPU a GPU is attached only while a `spaces.GPU` function runs; `duration` is the most seconds one
call may hold it (a comparison runs several methods, so it gets the deployment's job timeout, capped).
"""

from __future__ import annotations

from collections.abc import Callable

MAX_GPU_SECONDS = 300  # ZeroGPU refuses long leases; a comparison over this should run on a dedicated GPU


def on_gpu(fn: Callable, seconds: float) -> Callable:
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=int(min(seconds, MAX_GPU_SECONDS)))(fn)
