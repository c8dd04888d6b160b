"""The one registry of methods: the CLI's --methods/--keep/--set, the UI's controls, the docs table and
the test matrix all read it.

    build(MethodSpec("prumerge", {"keep": 0.25}))   -> a validated PruMerge instance
    catalog()                                        -> JSON-serialisable description for the UI
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing
from dataclasses import MISSING, fields

from backends import checks
from backends.types import MethodSpec, RequestError
from methods.base import STAGES

_REGISTRY: dict[str, type] = {}
_LOADED = False


def register(cls: type) -> type:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every module in this package once, so each method file registers itself."""
    global _LOADED
    if _LOADED:
        return
    import methods

    for mod in pkgutil.iter_modules(methods.__path__):
        if mod.name not in ("base", "registry") and not mod.name.startswith("_"):
            importlib.import_module(f"methods.{mod.name}")
    _LOADED = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY, key=lambda n: (n != "baseline", list(_STAGE_ORDER).index(_REGISTRY[n].stage), n))


_STAGE_ORDER = ("baseline", "before_llm", "in_llm", "kv_cache", "architecture")


def get(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise RequestError(f"unknown method {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def _coerce(method: str, field: str, kind: typing.Any, value: typing.Any) -> typing.Any:
    """Turn a CLI/UI value into the field's declared type, or refuse it clearly (the same rules as the app's
    checks: numeric strings coerced; NaN, infinities, integers past 64 bits and non-numbers refused)."""
    if typing.get_origin(kind) is typing.Literal:
        return checks.coerce(method, field, "choice", value, typing.get_args(kind))
    return checks.coerce(method, field, _type_name(kind), value)


def build(spec: MethodSpec, keep: float | None = None):
    """Instantiate and validate a method. `keep` (if given) sets the budget of budgeted methods unless the
    spec's params set it explicitly."""
    cls = get(spec.name)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(spec.params) - known
    if unknown:
        raise RequestError(f"{spec.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(known) or 'none'}")
    kwargs = {k: _coerce(spec.name, k, hints[k], v) for k, v in spec.params.items()}
    if keep is not None and cls.budget_field and cls.budget_field not in kwargs:
        kwargs[cls.budget_field] = _coerce(spec.name, cls.budget_field, float, keep)
    return cls(**kwargs)


def _type_name(kind: typing.Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "choice"
    return getattr(kind, "__name__", str(kind))


def _field_help(cls: type) -> dict[str, str]:
    """Each field's trailing comment in its class body (`keep: float = 0.5  # share kept ...`): the page shows it
    as the parameter's explanation, so a field documented once in its method file is explained everywhere."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # base classes first, so a subclass's comment wins
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^    (\w+): [^\n=]+=[^\n#]*#\s*(.+)$", source, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def catalog() -> list[dict]:
    """Every method with its paper facts and fields (name, type, default, choices): what the UI renders."""
    out = []
    for n in names():
        cls = _REGISTRY[n]
        hints = typing.get_type_hints(cls)
        params = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            choices = list(typing.get_args(hints[f.name])) if typing.get_origin(hints[f.name]) is typing.Literal else []
            params.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default, "choices": choices,
                           "help": _field_help(cls).get(f.name, "")})
        out.append({"name": n, "stage": cls.stage, "stage_label": STAGES[cls.stage], "paper": cls.paper,
                    "summary": cls.summary, "needs": cls.needs,
                    "fidelity": cls.fidelity, "rope": cls.rope, "budget_field": cls.budget_field, "params": params})
    return out


def docs_table() -> str:
    """The README's method table, generated from the registry (a test keeps the README in sync)."""
    stage = {"baseline": "-", "before_llm": "before the LLM", "in_llm": "inside the LLM",
             "kv_cache": "KV cache / decode", "architecture": "architecture"}
    rows = ["| method | paper | stage | needs | defaults | kept tokens' positions | fidelity |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in catalog():
        defaults = ", ".join(f"{p['name']}={p['default']}" for p in e["params"]) or "-"
        rows.append(f"| `{e['name']}` | {e['paper']} | {stage[e['stage']]} | {e['needs']} | {defaults} | "
                    f"{e['rope']} | {e['fidelity']} |")
    return "\n".join(rows)
