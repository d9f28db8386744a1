"""Shapes from the command line: `--shape rows=8,cols=393216` (repeatable) -> cases of the selected suites.

A shape names some of a suite's parameters (those its declared cases use, plus the optional ones it declares
in `Suite.options`, e.g. attention's `causal_align`); the others take the value of the suite's first quick
case. Values are converted to the type the declared cases use (int, float, bool: 1/0/true/false/T/F, str)
and optional parameters are checked against their allowed values. Anything else is a `UsageError` naming the
valid parameters (one line, exit 2).
"""
from __future__ import annotations

from typing import Any

from harness.registry import Suite, UsageError

_TRUE, _FALSE = ("1", "true", "t", "yes", "y"), ("0", "false", "f", "no", "n")


def parse(text: str) -> dict[str, str]:
    """'rows=8,cols=393216' -> {'rows': '8', 'cols': '393216'} (values converted per suite later)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--shape {text!r}: expected name=value pairs separated by commas, e.g. rows=8,cols=4096")
        out[key.strip()] = value.strip()
    if not out:
        raise UsageError("--shape needs name=value pairs, e.g. --shape rows=8,cols=4096")
    return out


def parameters(suite: Suite) -> dict[str, Any]:
    """Every parameter a shape may set, with an example value (its type) or the allowed values (a tuple)."""
    params: dict[str, Any] = {}
    for mode in ("quick", "full", "test"):
        for p, _ in suite._cases[mode]:
            for k, v in p.items():
                params.setdefault(k, v)
    for k, allowed in suite.options.items():
        params[k] = tuple(allowed)
    return params


def _convert(suite: Suite, key: str, value: str, like: Any) -> Any:
    if isinstance(like, tuple):
        if value not in like:
            raise UsageError(f"--shape {key}={value}: suite {suite.name} takes {key} in {', '.join(map(str, like))}")
        return value
    try:
        if isinstance(like, bool):
            low = value.lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(value)
            return low in _TRUE
        if isinstance(like, int):
            v = int(value)
            if v < 0:
                raise ValueError(value)
            return v
        if isinstance(like, float):
            return float(value)
    except ValueError:
        kind = "true/false" if isinstance(like, bool) else f"a non-negative {type(like).__name__}"
        raise UsageError(f"--shape {key}={value}: suite {suite.name} wants {kind} for {key}") from None
    return value


def cases(suite: Suite, shapes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The case parameters of `suite` for the command-line shapes, validated (UsageError otherwise)."""
    params = parameters(suite)
    base = dict(suite._cases["quick"][0][0]) if suite._cases["quick"] else {}
    out = []
    for shape in shapes:
        unknown = [k for k in shape if k not in params]
        if unknown:
            raise UsageError(f"--shape: suite {suite.name} has no parameter {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(params)}")
        case = dict(base)
        for k, v in shape.items():
            case[k] = _convert(suite, k, v, params[k])
        missing = [k for k in params if k not in case and not isinstance(params[k], tuple)]
        if missing:
            raise UsageError(f"--shape: suite {suite.name} needs {', '.join(missing)} too")
        out.append(case)
    return out


def apply(suites: list[Suite], texts: list[str]) -> None:
    """Replace the cases of mode "shape" of every selected suite with the command-line shapes."""
    shapes = [parse(t) for t in texts]
    for suite in suites:
        suite.set_cases("shape", cases(suite, shapes))
