"""Types of recipe keys and plugin options, written as annotations (``int``, ``float | None``, ``list[str]``,
``Literal["stop", "skip"]``, ``dict[str, Any]``): whether a value conforms, how messages and tables name the type,
and its JSON Schema.

A plugin option without a declared type takes its default's type; a ``None`` default then accepts any value,
which is why plugins declare the type of such options (see :func:`option_type`).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

_UNIONS = (Union, types.UnionType)
_NAMES = {bool: ("true or false", "bool"), int: ("an integer", "int"), float: ("a number", "float"),
          str: ("a string", "str"), list: ("a list", "list"), dict: ("a mapping", "mapping"),
          type(None): ("null", "null")}
_JSON = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
         type(None): "null"}


def of_default(default: Any) -> Any:
    """The type a default implies when a plugin declares none (``None``: any value)."""
    if default is None:
        return Any
    if isinstance(default, (list, tuple)):
        return list
    if isinstance(default, dict):
        return dict
    return type(default) if type(default) in _NAMES else Any


def option_type(defaults: Mapping[str, Any], declared: Mapping[str, Any], name: str) -> Any:
    """An option's type: the plugin's declared annotation, else its default's type."""
    return declared[name] if name in declared else of_default(defaults.get(name))


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as YAML reads it) has type ``annotation``; an int passes for a float, a bool only for
    bool."""
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in _UNIONS:
        return any(conforms(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, list) and all(conforms(item, args[0] if args else Any) for item in value)
    if origin is dict:
        item = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(isinstance(k, str) and conforms(v, item) for k, v in value.items())
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _NAMES:
        return isinstance(value, annotation)
    raise TypeError(f"unsupported option type {annotation!r}: use bool, int, float, str, None, list[...], "
                    "dict[str, ...], Literal[...] or a union of these")


def describe(annotation: Any) -> str:
    """How an error names the type: ``an integer``, ``a list of strings``, ``an integer or null``."""
    if annotation is Any:
        return "any value"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in _UNIONS:
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (list, tuple) and args and args[0] is not Any:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return "a mapping"
    return _NAMES.get(origin or annotation, (str(annotation), ""))[0]


def _plural(annotation: Any) -> str:
    text = describe(annotation)
    return {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans",
            "a mapping": "mappings"}.get(text, text)


def label(annotation: Any) -> str:
    """How tables name the type: ``int``, ``float | null``, ``list[str]``, ``'stop' | 'skip'``, ``any``."""
    if annotation is Any:
        return "any"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in _UNIONS:
        return " | ".join(label(arg) for arg in args)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (list, tuple):
        return f"list[{label(args[0])}]" if args and args[0] is not Any else "list"
    if origin is dict:
        return "mapping"
    return _NAMES.get(annotation, ("", getattr(annotation, "__name__", str(annotation))))[1]


def to_json(annotation: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a type."""
    if annotation is Any:
        return {}
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in _UNIONS:
        return {"anyOf": [to_json(arg) for arg in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", **({"items": to_json(args[0])} if args and args[0] is not Any else {})}
    if origin is dict:
        item = args[1] if len(args) == 2 else Any
        return {"type": "object", **({"additionalProperties": to_json(item)} if item is not Any else {})}
    if annotation is None:
        return {"type": "null"}
    return {"type": _JSON[annotation]}
