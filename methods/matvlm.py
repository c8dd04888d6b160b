"""`matvlm` (MaTVLM, ICCV 2025): the model as a hybrid, a quarter of its attention layers swapped for Mamba-2.

Rule (paper; official code hustvl/MaTVLM): every fourth decoder layer from layer 0 (0, 4, ..., 28 of 32) has its
attention replaced by a Mamba-2 mixer initialised from that attention's weights (x <- W_V, B <- W_K, C <- W_Q, out
<- W_O), then distilled from the original model (KL on logits + L2 on per-layer outputs; the swapped layers train
whole): backends/tiny/hybrid.py and train_hybrid.py. The method swaps the distilled layers' parts in for the run and
restores the original modules afterwards. The swapped layers keep no KV cache (a fixed-size conv + SSM state
instead, reported as `mamba_state_bytes`), so KV bytes fall by their share; no token is removed. The hybrid file
names its layers: the built-in model's are 3 and 7 (every fourth from layer 3, see the fidelity note).
Mamba-2 runs in plain torch (its quadratic SSD form), without mamba-ssm or causal-conv1d kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backends.state import RunState
from backends.tiny.hybrid import HYBRID_FILE, HybridError, load_hybrid, swapped_in
from backends.types import RequestError
from methods.base import Method
from methods.registry import register

_HYBRIDS: dict[tuple, dict] = {}  # loaded hybrid layers, per model and file version

OFFICIAL = ("the official MaTVLM hybrid (hustvl/MaTVLM_0_25_Mamba2) is TinyLLaVA-Phi-2-SigLIP with Mamba-2 in "
            "layers 0, 4, ..., 28, an architecture this app does not load: it would take a TinyLLaVA (Phi-2 + SigLIP) "
            "adapter, the hybrid wrapper's layer layout and a key map from its mamba weights onto our mixer; for "
            "this model, distil a hybrid with python -m backends.tiny.train_hybrid --model FOLDER")


def hybrid_for(model, path: str) -> dict:
    src = getattr(model.config, "_name_or_path", None)
    if path:
        file = Path(path)
    elif src and Path(src).is_dir():
        file = Path(src) / HYBRID_FILE
    else:
        raise HybridError(f"no hybrid for {src}: {OFFICIAL}")
    key = (id(model), str(file), file.stat().st_mtime if file.is_file() else 0.0)
    if key not in _HYBRIDS:
        _HYBRIDS.clear()
        _HYBRIDS[key] = load_hybrid(model, file)
    return _HYBRIDS[key]


@register
@dataclass
class MaTVLM(Method):
    name = "matvlm"
    stage = "architecture"
    paper = "MaTVLM (ICCV 2025)"
    summary = ("A hybrid of the model: a quarter of its attention layers are Mamba-2 mixers distilled from it, so "
               "those layers keep a fixed-size state instead of a KV cache that grows with every token.")
    needs = "a hybrid distilled for the model (built-in: shipped beside it; python -m backends.tiny.train_hybrid)"
    fidelity = ("the paper's recipe (every fourth layer, initialisation from attention, KL + per-layer L2) at 8 "
                "layers, from layer 3 (3 and 7; the paper starts at 0: this model's layer 0 does a trained cell lookup "
                "that a recurrence does not take over in minutes, see backends/tiny/train_hybrid.py), "
                "distilled here in minutes with only the swapped layers trained (the paper also trains the connector) "
                "and the conv started as the identity (ours); Mamba-2 in plain torch")
    rope = "original (no token removed; the Mamba-2 layers use no positions)"
    keep_all = {"layers": "none"}  # no layer swapped: the model itself

    layers: str = "all"  # distilled layers to swap in: "all", "none", or a comma list such as "0" or "0,4"
    hybrid_path: str = ""  # a hybrid file; empty: the model folder's hybrid_mamba2.safetensors

    def validate(self) -> None:
        super().validate()
        text = self.layers.replace(" ", "")
        if text not in ("all", "none") and not all(p.isdigit() for p in text.split(",")):
            raise RequestError(f"{self.name}: layers must be all, none or layer numbers like 0,4; got {self.layers!r}")
        if self.hybrid_path and not Path(self.hybrid_path).is_file():
            raise RequestError(f"{self.name}: hybrid_path {self.hybrid_path} is not a file")

    @contextmanager
    def apply(self, state: RunState) -> Iterator[None]:
        if self.layers.strip() == "none":
            yield
            return
        ad = state.adapter
        try:
            blocks = hybrid_for(ad.model, self.hybrid_path)
        except HybridError as e:
            raise RequestError(f"{self.name}: {e}") from None
        text = self.layers.replace(" ", "")
        chosen = sorted(blocks) if text == "all" else sorted({int(p) for p in text.split(",")})
        if not set(chosen) <= set(blocks):
            raise RequestError(f"{self.name}: layers {chosen} are not all distilled (the hybrid has {sorted(blocks)})")
        with swapped_in(ad.layers, {i: blocks[i] for i in chosen}) as stand_ins:
            try:
                yield
            finally:
                state.info.update(mamba_layers=chosen, attention_layers=len(ad.layers) - len(chosen),
                                  mamba_state_bytes=sum(w.state_bytes() for w in stand_ins.values()),
                                  mamba_state_note="conv + SSM state of the Mamba-2 layers at the end of the run "
                                                   "(fixed size; float32); those layers hold no keys or values")
