"""Dotted ``key=value`` overrides for config dataclasses, checked against the field types.

``apply_overrides(config, ["optimizer.lr=3e-7", "parallel.pipeline_layout=[9,9]", "rewards.0.weight=2"])`` walks
dataclass fields (and list indices / dict keys), parses each value, and converts it to the field's annotated type
(``int``, ``float``, ``bool``, ``str``, ``Literal``, ``X | None``, ``list[T]``, ``dict``). A misspelt key fails with
the nearest valid keys; a value of the wrong type fails naming the key, the expected type and the value given.

Values are parsed as JSON first, then as a Python literal, else kept as a string: ``8``, ``3e-7``, ``true``,
``null``/``none``, ``[9,9]``, ``{"a": 1}``. For ``str`` fields the text is taken verbatim (``time_limit=04:00:00``).
For ``list[...]`` fields a plain comma-separated text works too (``data.splits=math,code``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any, Literal, get_args, get_origin

_NONE_WORDS = {"none", "null", "~"}
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


class OverrideError(ValueError):
    """An override names an unknown key or gives a value of the wrong type."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def parse_value(text: str) -> Any:
    """Parse override text: JSON, then a Python literal, then ``none``/``true``-style words, else the text."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in _NONE_WORDS:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(stripped)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def coerce(value: Any, tp: Any, key: str, *, raw: str | None = None) -> Any:
    """Convert ``value`` (parsed from ``raw`` when it came from text) to type ``tp``.

    Args:
        value: The parsed value (or a value from a dict, for :func:`from_dict`).
        tp: The annotated field type.
        key: Dotted key, for error messages.
        raw: The original override text, used verbatim for ``str`` fields.

    Returns:
        The converted value.

    Raises:
        OverrideError: If the value does not fit the type.
    """
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key, raw=raw)
            except OverrideError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise OverrideError(errors[0])
        raise OverrideError(f"{key}: expected {_type_name(tp)}, got {_show(value, raw)}")
    if origin is Literal:
        choices = get_args(tp)
        candidates = [value] if raw is None else [raw.strip(), value]
        for candidate in candidates:
            for choice in choices:
                if candidate == choice and type(candidate) is type(choice):
                    return choice
        raise OverrideError(f"{key}: {_show(value, raw)} is not one of {', '.join(repr(c) for c in choices)}")
    if _is_dataclass_type(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key)
        if isinstance(value, tp):
            return value
        first = dataclasses.fields(tp)[0].name
        raise OverrideError(f"{key} is a {tp.__name__} block: set its fields instead, e.g. {key}.{first}=...")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        (item_type,) = get_args(tp)[:1] or (Any,)
        if raw is not None and not isinstance(value, list | tuple):
            text = raw.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1].strip()
            value = [] if not text else [parse_value(part) for part in text.split(",")]
            parts = [] if not text else [part.strip() for part in text.split(",")]
            return [
                coerce(v, item_type, f"{key}[{i}]", raw=p) for i, (v, p) in enumerate(zip(value, parts, strict=True))
            ]
        if not isinstance(value, list | tuple):
            raise OverrideError(f"{key}: expected a list ({_type_name(tp)}), got {_show(value, raw)}")
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise OverrideError(f"{key}: expected a mapping ({_type_name(tp)}), got {_show(value, raw)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if raw is not None and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        raise OverrideError(f"{key}: expected a bool (true/false), got {_show(value, raw)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and raw is not None and "e" in raw.lower():
            return int(value)
        raise OverrideError(f"{key}: expected an int, got {_show(value, raw)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise OverrideError(f"{key}: expected a float, got {_show(value, raw)}")
    if tp is str:
        if raw is not None:
            return raw
        if isinstance(value, str):
            return value
        raise OverrideError(f"{key}: expected a string, got {_show(value, raw)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise OverrideError(f"{key}: cannot convert {_show(value, raw)} to {_type_name(tp)}")


def _show(value: Any, raw: str | None) -> str:
    return repr(raw) if raw is not None else f"{value!r} ({type(value).__name__})"


def config_keys(config: Any, prefix: str = "") -> Iterator[str]:
    """Every settable dotted key of a config instance (dataclass fields, list items of dataclasses)."""
    for f in dataclasses.fields(config):
        key = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from config_keys(value, key + ".")
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            yield key
            for i, item in enumerate(value):
                yield from config_keys(item, f"{key}.{i}.")
        else:
            yield key


def _unknown(key: str, valid: Iterable[str], context: str) -> OverrideError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = [
            k
            for k in valid
            if k.rsplit(".", 1)[-1]
            in difflib.get_close_matches(last, [v.rsplit(".", 1)[-1] for v in valid], n=3, cutoff=0.6)
        ][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(valid)}"
    return OverrideError(f"unknown key {key!r}{context}{hint}")


def set_by_path(config: Any, key: str, raw: str, *, context: str = "") -> None:
    """Set one dotted ``key`` on ``config`` from override text ``raw`` (see module docstring)."""
    parts = key.split(".")
    obj = config
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if dataclasses.is_dataclass(obj):
            names = [f.name for f in dataclasses.fields(obj)]
            if part not in names:
                raise _unknown(key, config_keys(config), context)
            tp = _hints(type(obj))[part]
            if last:
                setattr(obj, part, coerce(parse_value(raw), tp, here, raw=raw))
                return
            child = getattr(obj, part)
            if child is None:
                part_after = parts[depth + 1] if depth + 1 < len(parts) else "field"
                raise OverrideError(
                    f"{here} is not set in this recipe{context} (it is None), so {key!r} cannot be overridden; "
                    f"turn the {_type_name(tp)} block on first with {here}={{}} (its defaults) or "
                    f'{here}={{"{part_after}": ...}}'
                )
            obj = child
        elif isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                raise OverrideError(
                    f"{key}: {'.'.join(parts[:depth])} is a list of {len(obj)} items; {part!r} is not a valid index"
                )
            if last:
                old = obj[int(part)]
                tp = type(old) if old is not None else Any
                obj[int(part)] = coerce(parse_value(raw), tp, here, raw=raw if tp is str else None)
                return
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            if last:
                obj[part] = parse_value(raw)
                return
            obj = obj.setdefault(part, {})
        else:
            raise OverrideError(
                f"{key}: {'.'.join(parts[:depth])} is a {type(obj).__name__} value, not a block with keys"
            )


def split_override(text: str) -> tuple[str, str]:
    """Split ``key=value``; raises :class:`OverrideError` when there is no ``=`` or no key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(f"override {text!r} must look like key=value (e.g. optimizer.lr=1e-5)")
    return key.lstrip("+"), value


def apply_overrides(config: Any, overrides: Sequence[str], *, context: str = "") -> Any:
    """Apply ``key=value`` overrides to a config dataclass in place and return it.

    Args:
        config: A dataclass instance (e.g. a ``RecipeConfig``).
        overrides: Texts like ``"optimizer.lr=1e-6"``.
        context: Appended to error messages (e.g. `` in recipe 'x'``).

    Returns:
        The same config object.

    Raises:
        OverrideError: Unknown key (with the nearest valid keys) or a value that does not fit the field's type.
    """
    for text in overrides:
        key, raw = split_override(text)
        set_by_path(config, key, raw, context=context)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-compatible data (dataclasses become dicts)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data (the inverse of :func:`to_dict`), checking types.

    Raises:
        OverrideError: On unknown keys (with suggestions), missing required keys or wrong types.
    """
    if not isinstance(data, dict):
        raise OverrideError(f"{prefix or cls.__name__}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in names:
            raise _unknown(key, [f"{prefix}.{n}" if prefix else n for n in names], f" in {cls.__name__}")
        kwargs[name] = coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise OverrideError(f"{prefix or cls.__name__}: {exc}") from exc


def render(config: Any, fmt: Literal["json", "yaml"] = "json") -> str:
    """Render a config as JSON or YAML text (YAML needs PyYAML, which NeMo-Run installs)."""
    data = to_dict(config)
    if fmt == "json":
        return json.dumps(data, indent=2)
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML ships with nemo-run
        raise OverrideError("YAML output needs PyYAML (pip install pyyaml); use --format json") from exc
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
