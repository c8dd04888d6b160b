"""Request and result types: plain dataclasses that round-trip through JSON (no tensors, no torch import).

The same `RunRequest` runs in-process or on a remote worker: the input frames travel as base64 PNG, the
method as `{"name", "params"}`, and the worker rebuilds everything else. `ui/` imports this module, so it
must stay free of torch.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

MediaKind = Literal["image", "video"]


class RequestError(ValueError):
    """Bad input from a user (file, prompt, method, parameter): the message is shown to them as is."""


# Long enough for the built-in model's longest answer (a four-object description is ~31 tokens + </s>).
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass
class MethodSpec:
    """One method to run: its registry name and parameter overrides (the rest take the paper's defaults)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RequestError("a method needs a name")
        if not isinstance(self.params, dict):
            raise RequestError(f"{self.name}: params must be an object")


@dataclass
class GenerationSettings:
    """Decoding settings. Greedy only: a comparison must not depend on sampling luck."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    warmup: int = 1  # untimed full runs before the timed ones (first-call allocations, kernel selection)
    repeats: int = 1  # timed runs (at least); timings are their median, their spread is reported too
    # more timed runs (up to 20) while the totals spread over 10% of their median and this many seconds of
    # timed runs are not spent: small models get many cheap runs, large ones stop at `repeats`
    repeat_budget_s: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 512:
            raise RequestError(f"max_new_tokens must be in 1..512, got {self.max_new_tokens}")
        if not 0 <= self.warmup <= 5:  # one message per violation, as the page, the API and the CLI give
            raise RequestError(f"warmup must be in 0..5, got {self.warmup}")
        if not 1 <= self.repeats <= 20:
            raise RequestError(f"repeats must be in 1..20, got {self.repeats}")
        if not 0 <= self.repeat_budget_s <= 60:
            raise RequestError(f"repeat_budget_s must be in 0..60 seconds, got {self.repeat_budget_s:g}")


@dataclass
class Media:
    """The visual input: one image, or the frames sampled from a video, each a PNG encoded in base64."""

    kind: MediaKind
    frames_png: list[str]
    name: str = ""  # the uploaded file's base name, for display only (never used as a path)
    duration_s: float | None = None  # videos: the clip's length

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise RequestError(f"media kind must be 'image' or 'video', got {self.kind!r}")
        if not self.frames_png or not all(isinstance(f, str) for f in self.frames_png):
            raise RequestError("media needs at least one frame (base64 PNG strings)")

    @staticmethod
    def encode_png(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    def frame_bytes(self) -> list[bytes]:
        return [base64.b64decode(f) for f in self.frames_png]


@dataclass
class Comparison:
    """One input and prompt, N methods: what a user asks the pool for."""

    media: Media
    prompt: str
    methods: list[MethodSpec]
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    model: str = "builtin"
    follow_ups: list[str] = field(default_factory=list)  # later questions of the same conversation, in order

    def requests(self) -> list[RunRequest]:
        return [RunRequest(self.media, self.prompt, m, self.generation, self.model, follow_ups=list(self.follow_ups))
                for m in self.methods]


@dataclass
class RunRequest:
    """One run: the unit of work a pool worker executes."""

    media: Media
    prompt: str
    method: MethodSpec
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    model: str = "builtin"
    index: int = 0  # position of this run in its comparison (results stream in finishing order)
    follow_ups: list[str] = field(default_factory=list)  # turns 2.. on the KV cache the method left (see turns.py)


@dataclass
class VisualTokens:
    input: int = 0  # visual tokens the encoder produced (all frames)
    kept: int = 0  # visual tokens that enter the LLM
    per_layer: list[int] = field(default_factory=list)  # visual tokens each decoder layer processes
    effective: float = 0.0  # mean of per_layer


@dataclass
class Timings:
    """Milliseconds; each is the median over the timed repeats."""

    preprocess: float = 0.0  # processor: resize, normalise, tokenise
    vision: float = 0.0  # vision encoder + projector (+ any pre-LLM reduction)
    prefill: float = 0.0  # LLM over the prompt up to the first output token
    ttft: float = 0.0  # time to first token: preprocess + vision + prefill
    decode: float = 0.0  # every output token after the first
    per_token: float = 0.0  # decode / (output tokens - 1)
    total: float = 0.0


@dataclass
class Memory:
    peak_bytes: int = 0  # growth over the run: CUDA allocator peak on GPU, process peak RSS on CPU
    peak_kind: str = ""  # which of the two was measured
    kv_cache_bytes: int = 0  # at the end of decoding
    kv_cache_bytes_prefill: int = 0  # right after prefill


@dataclass
class Turn:
    """One turn of a conversation: its question, answer and what that turn measured (turn 1 = the top level)."""

    prompt: str = ""
    answer: str = ""
    output_ids: list[int] = field(default_factory=list)
    timings_ms: Timings = field(default_factory=Timings)  # turn 2..: preprocess = rendering + tokenising, vision 0
    memory: Memory = field(default_factory=Memory)  # kv_cache_bytes_prefill: after this turn's prefill
    visual_tokens: VisualTokens = field(default_factory=VisualTokens)  # per_layer: visual KV each layer attends to
    kept_map: list[list[list[float]]] = field(default_factory=list)


MAX_TURNS = 8  # questions per conversation (the first + 7 follow-ups)


def check_follow_ups(follow_ups: object, max_chars: int) -> list[str]:
    """Validated follow-up questions (stripped): a list of non-empty strings, at most MAX_TURNS - 1."""
    if follow_ups in (None, ""):
        return []
    if not isinstance(follow_ups, list) or not all(isinstance(q, str) for q in follow_ups):
        raise RequestError("follow_ups must be a list of questions")
    out = [q.strip() for q in follow_ups]
    for i, q in enumerate(out, 2):
        if not q:
            raise RequestError(f"follow-up question {i - 1} (turn {i}) is empty: ask something or remove it")
        if len(q) > max_chars:
            raise RequestError(f"follow-up question {i - 1} has {len(q)} characters; the limit is {max_chars}")
    if len(out) + 1 > MAX_TURNS:
        raise RequestError(f"the conversation has {len(out) + 1} turns; the limit is {MAX_TURNS} (the first "
                           f"question and {MAX_TURNS - 1} follow-ups)")
    return out


@dataclass
class RunResult:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    error: str | None = None
    answer: str = ""
    output_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)  # generated token ids (fidelity checks compare these)
    visual_tokens: VisualTokens = field(default_factory=VisualTokens)
    timings_ms: Timings = field(default_factory=Timings)
    timings_ms_all: list[Timings] = field(default_factory=list)  # one per timed run, in the order run
    confidence: dict[str, float] = field(default_factory=dict)  # {"mean", "min"} probability of the answer's tokens
    flop_ideal_speedup: float | None = None  # computed from the config and per-layer counts, not measured
    memory: Memory = field(default_factory=Memory)
    kept_map: list[list[list[float]]] = field(default_factory=list)  # per frame: rows x cols, share kept in 0..1
    stage_maps: list[list[list[list[float]]]] = field(default_factory=list)  # per stage, like kept_map
    info: dict[str, Any] = field(default_factory=dict)  # method facts: positions, kernel, frozen layers, ...
    measurement: dict[str, Any] = field(default_factory=dict)  # how the numbers were taken
    turns: list[Turn] = field(default_factory=list)  # every turn, the first mirroring the fields above
    index: int = 0
    worker: str = ""

    @staticmethod
    def failed(method: MethodSpec, error: str, index: int = 0, worker: str = "") -> RunResult:
        return RunResult(method=method.name, params=dict(method.params), ok=False, error=error, index=index,
                         worker=worker)


def to_json(obj: Any) -> str:
    return json.dumps(asdict(obj), separators=(",", ":"))


def _build(cls: type, data: Any) -> Any:
    """Rebuild a dataclass from parsed JSON, recursing into dataclass-typed fields; unknown keys are refused."""
    if not isinstance(data, dict):
        raise RequestError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    extra = set(data) - set(known)
    if extra:
        raise RequestError(f"{cls.__name__}: unknown fields {sorted(extra)}")
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None and value is not None:
            value = [_build(sub, v) for v in value] if isinstance(value, list) else _build(sub, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RequestError(f"{cls.__name__}: {e}") from None


_NESTED = {
    ("Comparison", "media"): Media, ("Comparison", "methods"): MethodSpec,
    ("Comparison", "generation"): GenerationSettings, ("RunRequest", "media"): Media,
    ("RunRequest", "method"): MethodSpec, ("RunRequest", "generation"): GenerationSettings,
    ("RunResult", "visual_tokens"): VisualTokens, ("RunResult", "timings_ms"): Timings,
    ("RunResult", "timings_ms_all"): Timings,
    ("RunResult", "memory"): Memory, ("RunResult", "turns"): Turn, ("Turn", "timings_ms"): Timings,
    ("Turn", "memory"): Memory, ("Turn", "visual_tokens"): VisualTokens,
}


def from_json(cls: type, text: str | bytes) -> Any:
    """Parse and validate: a payload that does not match `cls` raises `RequestError`."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"not valid JSON: {e}") from None
    return _build(cls, data)


def from_dict(cls: type, data: dict) -> Any:
    return _build(cls, data)
