"""Shared fixtures: a tiny random LLaVA built from the built-in model's config (no hub), example media.

The random model's text weights are scaled up so its greedy output varies with the input (with the
default init a random LM repeats one token, and every method would trivially "agree").
"""

from __future__ import annotations

import os
import socket

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(path, cells=((0, 0, "red", "circle"), (2, 1, "blue", "square")), size=160):
    """Draw a small test scene: (row, col, colour, shape) per object on a 3x3 grid."""
    rgb = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (230, 210, 40)}
    img = Image.new("RGB", (size, size), (235, 235, 235))
    d, c = ImageDraw.Draw(img), size // 3
    for r, col, colour, shape in cells:
        box = (col * c + 8, r * c + 8, col * c + c - 8, r * c + c - 8)
        if shape == "circle":
            d.ellipse(box, fill=rgb[colour])
        elif shape == "square":
            d.rectangle(box, fill=rgb[colour])
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=rgb[colour])
    img.save(path)
    return path


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> str:
    from backends.tiny.arch import build_model, build_processor, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, seed=0)
    with torch.no_grad():  # larger LM weights: varied greedy tokens (see module docstring)
        for p in model.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    d = tmp_path_factory.mktemp("random-tiny-llava")
    model.save_pretrained(d)
    build_processor(tok).save_pretrained(d)
    _calibrate_shortv(str(d))
    _extras(model, d)
    return str(d)


def _extras(model, model_dir) -> None:
    """TwigVLM and MaTVLM need trained parts beside the model: untrained ones (the papers' initialisation: a twig
    copied from base layers 1-2, Mamba-2 mixers from layers 0 and 4's attention) are enough for structural tests."""
    from backends.tiny.hybrid import HYBRID_FILE, MambaBlock, mamba_layers, save_hybrid
    from backends.tiny.twig import TWIG_FILE, Twig

    torch.manual_seed(0)
    Twig.from_base(model, 1, 2).save(model_dir / TWIG_FILE, base="random test model")
    layers, cfg = model.model.language_model.layers, model.config.text_config
    save_hybrid({i: MambaBlock.from_layer(layers[i], cfg) for i in mamba_layers(len(layers))},
                model_dir / HYBRID_FILE, base="random test model")


def _calibrate_shortv(model_dir: str) -> None:
    """ShortV needs a per-model layer ranking; a small one (4 generated scenes) for the random model."""
    from backends import calibrate
    from backends.models import load_model
    from backends.settings import Settings

    lm = load_model(model_dir, Settings())
    calibrate.write_calibration(lm, calibrate._generated(4), model_dir, "4 generated scenes (test fixture)")


@pytest.fixture(scope="session")
def random_model(random_model_dir):
    from backends.models import load_model
    from backends.settings import Settings

    return load_model(random_model_dir, Settings())


@pytest.fixture(scope="session")
def scene_png(tmp_path_factory) -> str:
    return str(scene(tmp_path_factory.mktemp("img") / "scene.png"))


# --- Redis (issue 6: pools). A real redis-server on a free 127.0.0.1 port, no persistence, stopped after. ---
class RedisServer:
    """redis-server on a fixed free port, without persistence; it can be stopped and started again on that port
    (the Redis-fault tests restart it under running workers)."""

    def __init__(self):
        import shutil

        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.fail("redis-server is not installed (`make test` installs it: scripts/system-deps.sh)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self, down_s: float) -> None:
        import time

        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()
