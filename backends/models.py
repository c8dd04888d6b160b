"""Loading a VLM: the built-in tiny model from `assets/`, a local folder, or a Hugging Face id.

Every path goes through `AutoProcessor` + `AutoModelForImageTextToText.from_pretrained`, so the built-in
model exercises the same code as a hub checkpoint. Hub code never runs unless the deployment allow-lists
the id (`VLM_TRUST_REMOTE_CODE`). Failures raise `ModelLoadError` with one line naming the model.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from backends.adapter import LlavaAdapter, UnsupportedModel, adapter_for
from backends.settings import BUILTIN, BUILTIN_2ENC, BUILTIN_DIRS, Settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    processor: object
    adapter: LlavaAdapter
    device: torch.device
    dtype: torch.dtype
    quantize: str = ""

    def info(self) -> dict:
        return {"name": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "attn_implementation": self.adapter.attn_implementation, "quantize": self.quantize or "none"}


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name in ("", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


def _quant_config(quantize: str, dtype: torch.dtype):
    if not quantize:
        return None
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    raise ModelLoadError(f"unknown quantization {quantize!r}: use 8bit or 4bit")


def resolve(name: str) -> tuple[str, bool]:
    """(source for from_pretrained, is_local)."""
    if name in BUILTIN_DIRS:
        return str(BUILTIN_DIRS[name]), True
    if Path(name).is_dir():
        return name, True
    if not _HUB_ID.match(name):
        raise ModelLoadError(f"{name!r} is neither 'builtin' (or a variant: {BUILTIN_2ENC}), a model folder, nor a "
                             "Hugging Face id (owner/name)")
    return name, False


def load_model(name: str, settings: Settings | None = None, device: str | None = None,
               quantize: str | None = None) -> LoadedModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import backends.adapter_multi  # noqa: F401  (registers the two-encoder model class and its adapter)

    settings = settings or Settings.from_env()
    src, local = resolve(name)
    if name == BUILTIN and not BUILTIN_DIRS[BUILTIN].is_dir():
        raise ModelLoadError(f"the built-in model is missing at {src}; train it with: python app.py train-tiny")
    if name == BUILTIN_2ENC and not (Path(src) / "model.safetensors").is_file():
        raise ModelLoadError(f"the two-encoder built-in model is not trained yet (no weights at {src}); train it "
                             f"with: python -m backends.tiny.train_2enc (see its docstring)")
    dev = pick_device(device)
    dtype = pick_dtype(settings.dtype, dev)
    quantize = settings.quantize if quantize is None else quantize
    qcfg = _quant_config(quantize, dtype)
    trust = (not local) and name in settings.trust_remote_code
    kwargs = dict(dtype=dtype, attn_implementation="sdpa", trust_remote_code=trust)
    kwargs["device_map"] = str(dev)  # bitsandbytes requires a device_map; harmless otherwise
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            model = AutoModelForImageTextToText.from_pretrained(src, **kwargs).eval()
            if model.config.model_type == "llava_onevision":  # its processor needs torchvision: see onevision.py
                from backends.onevision import load_processor

                processor = load_processor(src, model.config, trust)
            else:
                processor = AutoProcessor.from_pretrained(src, trust_remote_code=trust)
    except Exception as e:  # the hub raises many types (OSError, HfHubHTTPError, LocalEntryNotFoundError, ...)
        logging.getLogger(__name__).debug("load failed", exc_info=True)
        where = "its folder" if local else "the Hugging Face hub (offline, or no such model)"
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ModelLoadError(f"cannot load model {name!r} from {where} ({why}); "
                             f"the built-in model works offline: --model {BUILTIN}") from None
    try:
        adapter = adapter_for(model, processor)
    except UnsupportedModel as e:
        raise ModelLoadError(f"model {name!r}: {e}") from None
    return LoadedModel(name, model, processor, adapter, dev, dtype, quantize)
