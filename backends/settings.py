"""Deployment settings, read once from the environment (no torch import: the UI reads them too).

| variable | default | meaning |
| --- | --- | --- |
| `VLM_MODEL` | `builtin` | model the app serves first: `builtin` or a Hugging Face id |
| `VLM_ALLOWED_MODELS` | (empty) | comma list of extra Hugging Face ids the UI may offer |
| `VLM_TRUST_REMOTE_CODE` | (empty) | comma list of ids allowed to run hub code (never by default) |
| `VLM_QUANTIZE` | (empty) | `8bit` or `4bit` (bitsandbytes) for hub models |
| `VLM_DTYPE` | `auto` | `float32`, `bfloat16`, `float16`; auto = bf16 on CUDA, fp32 on CPU |
| `VLM_THREADS` | `1` | torch threads per worker (the web server and Redis need the other core) |
| `VLM_MAX_UPLOAD_MB` | `20` | largest accepted upload |
| `VLM_MAX_IMAGE_PIXELS` | `40000000` | largest accepted image (width x height), checked before decoding |
| `VLM_MAX_ASPECT` | `20` | most elongated accepted image or frame (long side / short side) |
| `VLM_MAX_VIDEO_SECONDS` | `120` | longest accepted video (from the container header) |
| `VLM_MAX_VIDEO_FRAMES` | `20000` | most frames a video may hold (from the container header) |
| `VLM_MAX_DECODE_SECONDS` | `10` | time allowed to decode the sampled frames of one video |
| `VLM_FRAMES` | `8` | frames sampled from a video |
| `VLM_MAX_FRAMES` | `64` | most frames a request may ask to sample |
| `VLM_MAX_PROMPT_CHARS` | `2000` | longest accepted prompt |
| `VLM_JOB_TIMEOUT` | `600` | seconds one run may take on a worker |
| `VLM_MAX_QUEUE` | `32` | comparisons waiting in the web app's queue; past it a caller is told to try again |
| `REDIS_URL` | (empty) | if set, runs go to Redis workers instead of the in-process pool |
| `VLM_STORE` | `~/.cache/vlm-compare/comparisons.sqlite3` | saved comparisons (SQLite; on Redis, in Redis) |
| `VLM_REDIS_OUTAGE_S` | `30` | how long the app rides out a Redis outage before failing the runs it waits for |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_DIR = ROOT / "assets" / "tiny-llava-shapes"
BUILTIN = "builtin"
# Built-in variants (no settings needed): offered once their weights exist (see `Settings.models`).
BUILTIN_2ENC = "builtin-2enc"  # the built-in model with a second, convolutional vision encoder (METEOR stages 1-3)
BUILTIN_DIRS = {BUILTIN: BUILTIN_DIR, BUILTIN_2ENC: ROOT / "assets" / "tiny-llava-shapes-2enc"}


def builtin_ready(name: str) -> bool:
    """A built-in variant is offered when its folder holds weights (builtin-2enc is trained after the base)."""
    return name in BUILTIN_DIRS and (BUILTIN_DIRS[name] / "model.safetensors").is_file()


def _list(name: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


@dataclass
class Settings:
    model: str = BUILTIN
    allowed_models: list[str] = field(default_factory=list)
    trust_remote_code: list[str] = field(default_factory=list)
    quantize: str = ""
    dtype: str = "auto"
    threads: int = 1
    max_upload_mb: float = 20.0
    max_image_pixels: int = 40_000_000
    # the processor scales the short side up to its input size: a 20000x1 image becomes gigabytes
    max_aspect: float = 20.0
    max_video_seconds: float = 120.0
    max_video_frames: int = 20_000
    max_decode_s: float = 10.0
    frames: int = 8
    max_frames: int = 64
    max_prompt_chars: int = 2000
    job_timeout: int = 600
    max_queue: int = 32
    redis_url: str = ""
    store_path: str = "~/.cache/vlm-compare/comparisons.sqlite3"
    redis_outage_s: float = 30.0

    @staticmethod
    def from_env() -> Settings:
        e = os.environ.get
        return Settings(
            model=e("VLM_MODEL", BUILTIN), allowed_models=_list("VLM_ALLOWED_MODELS"),
            trust_remote_code=_list("VLM_TRUST_REMOTE_CODE"), quantize=e("VLM_QUANTIZE", ""),
            dtype=e("VLM_DTYPE", "auto"), threads=int(e("VLM_THREADS", "1")),
            max_upload_mb=float(e("VLM_MAX_UPLOAD_MB", "20")),
            max_image_pixels=int(e("VLM_MAX_IMAGE_PIXELS", "40000000")),
            max_aspect=float(e("VLM_MAX_ASPECT", "20")),
            max_video_seconds=float(e("VLM_MAX_VIDEO_SECONDS", "120")),
            max_video_frames=int(e("VLM_MAX_VIDEO_FRAMES", "20000")),
            max_decode_s=float(e("VLM_MAX_DECODE_SECONDS", "10")), frames=int(e("VLM_FRAMES", "8")),
            max_frames=int(e("VLM_MAX_FRAMES", "64")),
            max_prompt_chars=int(e("VLM_MAX_PROMPT_CHARS", "2000")), job_timeout=int(e("VLM_JOB_TIMEOUT", "600")),
            max_queue=int(e("VLM_MAX_QUEUE", "32")), redis_url=e("REDIS_URL", ""),
            redis_outage_s=float(e("VLM_REDIS_OUTAGE_S", "30")),
            store_path=e("VLM_STORE", "~/.cache/vlm-compare/comparisons.sqlite3"),
        )

    def models(self) -> list[str]:
        """Models a user may pick: the built-in one always, its variants whose weights exist, then the deployment's."""
        out = [BUILTIN] + [b for b in BUILTIN_DIRS if b != BUILTIN and builtin_ready(b)]
        for m in [self.model, *self.allowed_models]:
            if m not in out:
                out.append(m)
        return out
