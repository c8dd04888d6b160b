"""Coercion and range checks for values that arrive as JSON or CLI text (no torch: the UI uses this).

    number("0.5", "keep", float, lo=0.0, lo_open=True, hi=1.0)   -> 0.5
    coerce("fastv", "layer", "int", "3")                         -> 3

Whatever a JSON body can carry (strings, NaN, 300-digit integers, lists nested 100,000 deep) ends here either
as a value of the declared type or as a `RequestError` with one line naming the field: never as an exception
that reaches gradio's generic "the app raised an exception". Numeric strings are coerced; booleans are not
numbers; integers must fit 64 bits (the JSON encoders of the page and the API cannot write larger ones).
"""

from __future__ import annotations

import math
from typing import Any

from backends.types import RequestError

INT_LIMIT = 2**63  # integers must lie in (-2**63, 2**63): what a 64-bit encoder (orjson, torch seeds) handles
MAX_DEPTH = 32  # nesting allowed in a `params` value (real ones are 2 deep: run -> parameter -> value)
BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def show(value: Any, width: int = 40) -> str:
    """A short repr for messages: never raises (huge ints, deep nesting) and never floods the page."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"a deeply nested {type(value).__name__}"
    return text if len(text) <= width else text[: width - 3] + "..."


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts, counted without recursion and only up to `limit` + 1."""
    level, layer = 0, [value]
    while layer and level <= limit:
        layer = [v for x in layer for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())]
        level += 1 if layer else 0
    return level


def _reason(value: Any, kind: type, lo: float | None, hi: float | None, lo_open: bool) -> tuple[Any, str]:
    """(the number, "") or (None, why it is refused: "must be ...")."""
    x = value
    if isinstance(value, str):
        try:
            x = int(value.strip())
        except ValueError:
            try:
                x = float(value.strip())
            except ValueError:
                return None, "must be a number"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "must be a number"
    if isinstance(x, float) and not math.isfinite(x):
        return None, "must be a finite number"
    if kind is int:
        if isinstance(x, float):
            if not x.is_integer():
                return None, "must be a whole number"
            x = int(x)
        if abs(x) >= INT_LIMIT:
            return None, "must fit in 64 bits"
    elif abs(x) >= INT_LIMIT:  # beyond any parameter's sense, and float() of a 5000-digit int overflows
        return None, "must be a finite number of sensible size"
    else:
        x = float(x)
    if (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi):
        if kind is int and lo is not None and hi is not None and not lo_open:
            return None, f"must be in {int(lo)}..{int(hi)}"
        low = "-inf" if lo is None else f"{lo:g}"
        return None, f"must be in {'(' if lo_open else '['}{low}, {'inf' if hi is None else f'{hi:g}'}]"
    return x, ""


def number(value: Any, what: str, kind: type = int, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> Any:
    """`value` as an int or a float within [lo, hi] (or (lo, hi] with lo_open), or one RequestError saying why:
    "WHAT must be in 1..512, got 0"."""
    x, why = _reason(value, kind, lo, hi, lo_open)
    if why:
        raise RequestError(f"{what} {why}, got {show(value)}")
    return x


def coerce(method: str, field: str, kind: str, value: Any, choices: tuple | list = ()) -> Any:
    """A method parameter as its declared kind ("int", "float", "bool", "choice", "str"), or a RequestError
    "METHOD: bad value V for FIELD (it must be ...)". Ranges beyond the type belong to the method (validate())."""
    if kind in ("int", "float"):
        x, why = _reason(value, int if kind == "int" else float, None, None, False)
        if why:
            raise RequestError(f"{method}: bad value {show(value)} for {field} (it {why})")
        return x
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in BOOLS:
            return BOOLS[value.strip().lower()]
        raise RequestError(f"{method}: bad value {show(value)} for {field} (it must be true or false)")
    if kind == "choice":
        if not isinstance(value, (list, dict)) and value in choices:
            return value
        raise RequestError(f"{method}: bad value {show(value)} for {field} (it must be one of {tuple(choices)})")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(number(value, f"{method}: {field}", type(value)))
    raise RequestError(f"{method}: bad value {show(value)} for {field} (it must be text)")
