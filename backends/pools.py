"""Pick the pool for this deployment: `RedisPool` when a Redis URL is given (`--redis URL` or `REDIS_URL`),
else the in-process `LocalPool`.

    pool = make_pool(settings)                          # REDIS_URL decides
    pool = make_pool(settings, "redis://127.0.0.1:6379/0")

Raises `backends.pool.PoolError` (naming the URL) when Redis cannot be reached.
"""

from __future__ import annotations

from backends.settings import Settings


def make_pool(settings: Settings, redis_url: str | None = None):
    url = redis_url or settings.redis_url
    if url:
        from backends.redis_pool import RedisPool

        return RedisPool(settings, url)
    import importlib.util

    from backends.pool import LocalPool

    # On a Hugging Face ZeroGPU Space (the `spaces` package is present) the UI runs comparisons inside
    # `spaces.GPU`, a forked process: run them inline there (see LocalPool).
    return LocalPool(settings, inline=importlib.util.find_spec("spaces") is not None)
