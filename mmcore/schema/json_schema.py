"""The JSON Schema (draft 2020-12) of a recipe, made from :mod:`mmcore.schema.keys` and, when a registry is given,
from the registered plugins' names and option types (for editor completion of a stage's ``tasks`` and their options).

It describes a recipe file as written (no key is required at the top level, because a file may be a base that
others include) and equally the resolved recipe ``mmcore show`` prints. Plugin names the registry does not know
stay allowed, with any options: a recipe may load its own plugins (``plugins:``) that no schema can list.
"""

from __future__ import annotations

from typing import Any

from mmcore.registry import Entry, Registry
from mmcore.schema.keys import INCLUDE, SECTIONS, TASK, TOP, UNSET, Key, Section
from mmcore.schema.types import option_type, to_json

DRAFT = "https://json-schema.org/draft/2020-12/schema"
OPEN_OPTIONS: dict[str, Any] = {"type": ["object", "null"]}  # options of a plugin the schema does not know


def recipe_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The recipe's JSON Schema; with ``registry``, its plugins' names and options are spelled out."""
    defs = {_ref_name(s): _section(s, registry) for s in SECTIONS.values() if s is not TOP}
    top = _section(TOP, registry)
    top["properties"] = {INCLUDE.name: _key(INCLUDE, None), **top["properties"]}
    top.pop("required", None)  # a base file that others include gives only some keys
    return {"$schema": DRAFT, "$id": "https://mmcore.dev/recipe.schema.json", "title": "mmcore recipe", **top,
            "$defs": defs}


def _ref_name(section: Section) -> str:
    return section.name.replace(" ", "_")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name.replace(' ', '_')}"}


def _section(section: Section, registry: Registry | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "description": section.help,
                           "properties": {name: _key(key, registry) for name, key in section.keys.items()},
                           "additionalProperties": False}
    required = [name for name, key in section.keys.items() if key.required]
    if required:
        out["required"] = required
    if registry is not None and "head" in section.keys:
        out = {"allOf": [out, _by_head(registry)]}
    return out


def _key(key: Key, registry: Registry | None) -> dict[str, Any]:
    help_text = key.help + (f" (default: {key.computed})" if key.computed else "")
    out = _value(key, registry)
    out["description"] = help_text
    if key.default is not UNSET:
        out["default"] = key.default
    return out


def _value(key: Key, registry: Registry | None) -> dict[str, Any]:
    if key.section is not None:
        one = _ref(key.section)
        if key.many:
            return {"type": "array", "items": one}
        if key.name == "data":  # one view, or a list of views (a downstream entry takes a single one)
            many: dict[str, Any] = {"type": "array", "items": one, "minItems": 1}
            return {"anyOf": [one, many]}
        return one
    if key.plugins is not None:
        return _plugins(key.plugins, registry)
    out = to_json(key.type)
    bounds = {"minimum": key.minimum, "maximum": key.maximum}
    if key.exclusive:
        bounds = {"exclusiveMinimum": key.minimum, "maximum": key.maximum}
    target = next((s for s in out.get("anyOf", [out]) if s.get("type") in ("integer", "number")), None)
    if target is not None:
        target.update({k: v for k, v in bounds.items() if v is not None})
    if key.pattern is not None:
        out["pattern"] = key.pattern
    return out


def _plugins(kind: str, registry: Registry | None) -> dict[str, Any]:
    """A ``kind -> options`` mapping (tasks, datasets, loggers), a backbone mapping, or a head's options."""
    entries = list(registry.entries(kind)) if registry is not None else []
    if kind == "backbone":
        return _backbone(entries)
    if kind == "head":
        return {"type": ["object", "null"]}  # refined per head by _by_head
    extra = TASK if kind == "task" else None
    properties = {e.name: _options(e, extra) for e in entries}
    return {"type": "object", "properties": properties, "additionalProperties": OPEN_OPTIONS}


def _options(entry: Entry, extra: Section | None = None) -> dict[str, Any]:
    """One plugin's options: each with its type (declared, else its default's) and default."""
    properties = {name: _key(key, None) for name, key in (extra.keys.items() if extra else ())}
    for name, default in entry.defaults.items():
        schema = to_json(option_type(entry.defaults, entry.types, name))
        properties[name] = {**schema, "default": _plain(default)}
    return {"type": ["object", "null"], "description": f"{entry.kind} {entry.name}: {entry.description}".rstrip(": "),
            "properties": properties, "additionalProperties": False}


def _backbone(entries: list[Entry]) -> dict[str, Any]:
    names = [e.name for e in entries]
    variants: list[dict[str, Any]] = []
    for entry in entries:
        options = _options(entry)
        options["type"] = "object"
        options["properties"] = {"name": {"const": entry.name}, **options["properties"]}
        options["required"] = ["name"]
        variants.append(options)
    # A backbone no schema knows (a recipe's own plugin), or one that only changes options of an included recipe's.
    variants.append({"type": "object", "properties": {"name": {"type": "string", "not": {"enum": names}}}})
    variants.append({"type": "object", "not": {"required": ["name"]}})
    return {"anyOf": variants}


def _by_head(registry: Registry) -> dict[str, Any]:
    """A fine-tuning's or evaluation's ``options`` are those of its ``head``."""
    entries = list(registry.entries("head"))
    variants: list[dict[str, Any]] = [
        {"properties": {"head": {"const": e.name}, "options": _options(e)}} for e in entries]
    variants.append({"properties": {"head": {"not": {"enum": [e.name for e in entries]}}}})
    return {"anyOf": variants}


def _plain(value: Any) -> Any:
    """A default as JSON holds it (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
