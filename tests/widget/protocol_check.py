"""A small structural checker of JSON-like values against the wire format's TypedDicts (``_protocols.py``)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """What is wrong with ``value`` as a ``tp`` (empty when nothing): missing or unknown keys of a TypedDict, values of
    the wrong type, anywhere inside. ``float`` takes ints (JSON numbers), ``int`` never takes bools."""
    if tp is Any:
        return []
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected a {tp.__name__} dict, got {type(value).__name__}"]
        hints = get_type_hints(tp)
        out = [f"{path}: missing key {k!r} of {tp.__name__}" for k in sorted(tp.__required_keys__ - value.keys())]
        out += [f"{path}: unknown key {k!r} (not in {tp.__name__})" for k in sorted(value.keys() - hints.keys())]
        for k in sorted(value.keys() & hints.keys()):
            out += problems(value[k], hints[k], f"{path}.{k}")
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        found = [problems(value, a, path) for a in args]
        if any(not f for f in found):
            return []
        names = " | ".join(getattr(a, "__name__", repr(a)) for a in args)
        return [f"{path}: {value!r:.80} is none of {names}: " + "; ".join(f[0] for f in found)]
    if origin is Literal:
        return [] if any(value == a and type(value) is type(a) for a in args) else [f"{path}: {value!r} not in {args}"]
    if origin in (list, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in problems(v, args[0] if args else Any, f"{path}[{i}]")]
    if origin in (dict, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a dict, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in problems(v, args[1] if args else Any, f"{path}.{k}")]
    if tp is type(None) or tp is None:
        return [] if value is None else [f"{path}: expected None, got {value!r:.80}"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is bytes:
        ok = isinstance(value, (bytes, bytearray, memoryview))
    elif tp in (str, bool, list, dict):
        ok = isinstance(value, tp)
    else:
        raise TypeError(f"protocol_check does not know the type {tp!r} (at {path}): teach it.")
    return [] if ok else [f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r:.80}"]
