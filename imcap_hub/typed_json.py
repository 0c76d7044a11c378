"""JSON objects -> dataclasses, checked against their type hints: the one reader behind
``config.json``, run configs and training records.

A wrong type, an unknown key (with the closest known one suggested) or a missing key is an error
that names the key by its dotted path, so a typo never passes silently.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ImcapError, naming_file

T = TypeVar("T")


def read_json_file(
    path: str | os.PathLike, error: type[ImcapError], parse: Callable[[Any], T]
) -> T:
    """``parse`` of the JSON in the file at ``path``. Every error is an ``error`` whose message
    starts with the file's name: unreadable, not JSON, or refused by ``parse`` (which raises
    ``error``)."""
    name = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{name} cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{name} is not valid JSON: {e}") from None
    try:
        return parse(data)
    except error as e:
        raise naming_file(e, name) from None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if tp is dict or origin is dict or is_dataclass(tp):
        return "an object"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    return names.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str, error: type[ImcapError]) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, error)
            except error as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise error(f"{where} must be {_type_name(tp)}, got {json.dumps(value)}")
    if is_dataclass(tp):
        return value if isinstance(value, tp) else from_json_object(tp, value, where, error)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where} must be a list, got {json.dumps(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]", error) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where} must be an object, got {json.dumps(value)}")
        args = typing.get_args(tp)
        item = args[1] if args else Any
        return {str(k): _convert(v, item, f"{where}.{k}", error) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{where} must be true or false, got {json.dumps(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where} must be an integer, got {json.dumps(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where} must be a number, got {json.dumps(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(f"{where} must be a string, got {json.dumps(value)}")
        return value
    return value


def from_json_object(
    cls: type[T], data: Any, where: str = "", error: type[ImcapError] = ImcapError
) -> T:
    """Build the dataclass ``cls`` from the JSON object ``data``, checking every field.

    ``where``: the dotted path of ``data`` in its file (for messages); ``error``: the exception
    class raised, with a one-line message naming the key.
    """
    label = where or "config"
    if not isinstance(data, dict):
        raise error(f"{label} must be an object, got {json.dumps(data, default=str)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            path = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"unknown key {path!r}{hint}; {label} takes {', '.join(known)}")
    kwargs = {}
    for f in fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], path, error)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise error(f"missing key {path!r}")
    return cls(**kwargs)
