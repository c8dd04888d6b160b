"""Pick the pool for this deployment. Only the in-process pool exists so far."""

from __future__ import annotations

from backends.settings import Settings


def make_pool(settings: Settings):
    from backends.pool import LocalPool

    return LocalPool(settings)
