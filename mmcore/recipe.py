"""Load a recipe: YAML files, ``include:`` chains, ``--set`` overrides, with every key traced to its file and line.

Merge order (later wins), the one documented order: plugin defaults < included files (in the order listed,
each after its own includes) < the recipe file itself < ``--set`` overrides. Mappings merge key by key, a
``--set`` mapping value too (``--set key:=value`` replaces instead); lists (``stages``, ``finetune``, ...) are
replaced whole. Plugin defaults are applied by :mod:`mmcore.validate`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmcore.errors import RecipeError
from mmcore.shipped import find_shipped, suggestion

KeyPath = tuple[str, ...]


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` as a float (YAML 1.2 does; PyYAML's 1.1 rules read a string)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with :class:`RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)  # RecipeLoader is a SafeLoader


@dataclass
class Recipe:
    """A merged recipe: ``data`` plus where each key came from (``origins`` maps key paths to (file, line))."""

    path: Path
    data: dict[str, Any]
    origins: dict[KeyPath, tuple[str, int | None]] = field(default_factory=dict)

    def where(self, key: KeyPath) -> tuple[str, int | None]:
        """(file, line) of a key path, falling back to the nearest traced parent, then to the recipe file."""
        for end in range(len(key), 0, -1):
            if key[:end] in self.origins:
                return self.origins[key[:end]]
        return str(self.path), None

    def error(self, key: KeyPath, message: str) -> RecipeError:
        """A :class:`RecipeError` located at ``key``."""
        file, line = self.where(key)
        return RecipeError(message, file=file, key=format_key(key), line=line)


def format_key(key: KeyPath) -> str:
    """``stages[0].tasks.mlm`` style rendering of a key path."""
    out = ""
    for part in key:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read ``path`` with its includes and apply ``--set`` overrides (``a.b.c=value``, value parsed as YAML).

    ``path`` is a file, or the name of a shipped recipe (``msp_tps``, ``base/lxmert_s_cpu``) when no such file exists.
    """
    path = Path(path)
    if not path.exists():
        shipped = find_shipped(str(path))
        if shipped is None:
            raise RecipeError("cannot read recipe: No such file or directory, and no shipped recipe has that name"
                              f"{suggestion(str(path))}", file=str(path))
        path = shipped
    data, origins = _load_with_includes(path.resolve(), chain=())
    if not data:
        raise RecipeError("the recipe is empty; it needs at least a backbone, datasets and stages or finetune", file=str(path))
    recipe = Recipe(path=path, data=data, origins=origins)
    for item in overrides:
        apply_override(recipe, item)
    return recipe


def _load_with_includes(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[KeyPath, tuple[str, int | None]]]:
    raw, lines = _read_yaml(path)
    merged: dict[str, Any] = {}
    origins: dict[KeyPath, tuple[str, int | None]] = {}
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError("'include' must be a file path or a list of file paths", str(path), "include", lines.get(("include",)))
    for index, name in enumerate(includes):
        target = (path.parent / name).resolve()
        line = lines.get(("include", str(index)), lines.get(("include",)))
        if not target.is_file():
            # A name that is no file beside the recipe is a shipped base (``include: [base/lxmert_s_cpu]``).
            target = find_shipped(name) or target
        if not target.is_file():
            raise RecipeError(f"included file not found: {target} (nor is {name!r} a shipped recipe"
                              f"{suggestion(name)})", str(path), f"include[{index}]", line)
        if target in (*chain, path):
            cycle = " -> ".join(str(p) for p in (*chain, path, target))
            raise RecipeError(f"cyclic include: {cycle}", str(path), f"include[{index}]", line)
        sub, sub_origins = _load_with_includes(target, (*chain, path))
        _merge(merged, sub, origins, sub_origins, ())
    own_origins = {key: (str(path), line) for key, line in lines.items() if key[:1] != ("include",)}
    _merge(merged, raw, origins, own_origins, ())
    return merged, origins


def _merge(dst: dict[str, Any], src: dict[str, Any], origins: dict, src_origins: dict, prefix: KeyPath) -> None:
    for key, value in src.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, src_origins, path)
            if path in src_origins:
                origins.setdefault(path, src_origins[path])
        else:
            dst[key] = copy.deepcopy(value)
            for k in [k for k in origins if k[: len(path)] == path]:
                del origins[k]
            origins.update({k: v for k, v in src_origins.items() if k[: len(path)] == path})


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse one YAML file into a mapping and the 1-based line of every key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"not a text file (byte {exc.start} is not UTF-8)", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        message, line = _yaml_problem(exc)
        raise RecipeError(message, file=str(path), line=line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a YAML mapping (key: value lines) at the top level, got a "
                          f"{type(data).__name__}", file=str(path), line=1)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _collect_lines(node, (), lines, str(path))
    return data, lines


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, int | None]:
    """(message, line) of a YAML error; the message says what was open when it failed and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    message = f"invalid YAML: {problem}"
    if context and context_mark is not None:
        message += f" ({context} that starts at line {context_mark.line + 1})"
    return message, mark.line + 1 if mark is not None else None


def _collect_lines(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], file: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            if path in lines:
                # PyYAML keeps the last of two equal keys silently; a recipe that says two things is a mistake.
                raise RecipeError(f"duplicate key {key_node.value!r} (first at line {lines[path]})", file=file,
                                  key=format_key(path), line=key_node.start_mark.line + 1)
            lines[path] = key_node.start_mark.line + 1
            _collect_lines(value_node, path, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            lines[path] = item.start_mark.line + 1
            _collect_lines(item, path, lines, file)


def apply_override(recipe: Recipe, item: str) -> None:
    """Apply one ``a.b.c=value`` override; list items are addressed by index or by their ``name``.

    A mapping value merges key by key into the mapping already there (``backbone={hidden_size: 64}`` keeps the
    backbone's ``name``); ``a.b:=value`` replaces it whole (``stages.x.tasks:={itc: {}}`` drops the other tasks).
    """
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key.path=value", file="--set")
    dotted, _, raw_value = item.partition("=")
    replace = dotted.endswith(":")
    dotted = dotted[:-1] if replace else dotted
    parts = [p for p in dotted.strip().split(".")]
    if not dotted.strip() or any(not p for p in parts):
        raise RecipeError(f"override {item!r} has an empty key", file="--set")
    try:
        value = parse_yaml(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    node: Any = recipe.data
    resolved: list[str] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part)
            if index is None:
                names = [str(x.get("name")) for x in node if isinstance(x, dict) and "name" in x]
                raise RecipeError(f"no item {part!r} in this list (by index 0..{len(node) - 1} or name: {', '.join(names)})",
                                  file="--set", key=".".join(parts[: depth + 1]))
            resolved.append(str(index))
            if last:
                break
            node = node[index]
        elif isinstance(node, dict):
            resolved.append(part)
            if last:
                break
            node = node.setdefault(part, {})
        else:
            raise RecipeError(f"cannot set {part!r} inside a {type(node).__name__}", file="--set",
                              key=".".join(parts[:depth]))
    slot = int(resolved[-1]) if isinstance(node, list) else resolved[-1]
    origins = {key: (f"--set {item}", None) for key in _leaf_keys(value, tuple(resolved))}
    current = node[slot] if isinstance(node, list) else node.get(slot)
    if not replace and isinstance(value, dict) and isinstance(current, dict):
        _merge(current, value, recipe.origins, origins, tuple(resolved))
        return
    node[slot] = value
    key = tuple(resolved)
    for k in [k for k in recipe.origins if k[: len(key)] == key]:
        del recipe.origins[k]
    recipe.origins.update(origins)


def _leaf_keys(value: Any, key: KeyPath) -> list[KeyPath]:
    """``key`` and the key path of everything inside a mapping ``value`` (for tracing an override's keys)."""
    keys = [key]
    if isinstance(value, dict):
        for name, inner in value.items():
            keys.extend(_leaf_keys(inner, (*key, str(name))))
    return keys


def _list_index(items: list[Any], part: str) -> int | None:
    if part.lstrip("-").isdigit():
        index = int(part)
        return index if -len(items) <= index < len(items) else None
    for index, item in enumerate(items):
        if isinstance(item, dict) and str(item.get("name")) == part:
            return index
    return None


def dump_recipe(data: dict[str, Any]) -> str:
    """YAML text of a resolved recipe, keys in their written order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
