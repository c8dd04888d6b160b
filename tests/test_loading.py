"""Model loading: offline hub error in one line; bitsandbytes 8-bit and 4-bit on the CPU."""

import os
import subprocess
import sys

import pytest

from backends import media, runner
from backends.models import ModelLoadError, load_model
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_offline_hub_error_is_one_line():
    with pytest.raises(ModelLoadError) as e:
        load_model("llava-hf/llava-1.5-7b-hf", Settings())
    msg = str(e.value)
    assert "\n" not in msg and "llava-hf/llava-1.5-7b-hf" in msg and "--model builtin" in msg


def test_cli_offline_error(scene_png):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "app.py", "compare", "--image", scene_png, "--prompt", "q",
                        "--model", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    doc_err = p.stdout + p.stderr
    assert p.returncode == 1 and "llava-onevision-qwen2-0.5b-ov-hf" in doc_err and "offline" in doc_err


def test_not_a_model_name():
    with pytest.raises(ModelLoadError, match="neither 'builtin'"):
        load_model("../../etc/passwd", Settings())


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_bitsandbytes_on_cpu(random_model_dir, scene_png, bits):
    import bitsandbytes as bnb

    lm = load_model(random_model_dir, Settings(), quantize=bits)
    kind = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
    q = lm.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q, kind) and lm.info()["quantize"] == bits
    req = RunRequest(media.image_media(scene_png, Settings()), "how many shapes are there?", MethodSpec("baseline"),
                     GenerationSettings(max_new_tokens=4, warmup=0))
    res = runner.run(req, lm, Settings())
    assert res.ok and res.output_tokens >= 1 and res.memory.kv_cache_bytes > 0
