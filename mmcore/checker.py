"""The recipe checker: collects every located problem of a recipe (file, line, key path) instead of stopping at
the first, and checks keys, numbers, plugin names and plugin options the same way for every section."""

from __future__ import annotations

import copy
from typing import Any

from mmcore.distributed import env_world_size
from mmcore.errors import MMCoreError, OptionError, RecipeError, UnknownNameError, did_you_mean
from mmcore.recipe import KeyPath, Recipe, format_key
from mmcore.registry import Registry
from mmcore.schema.keys import Key
from mmcore.schema.types import conforms, describe, option_type


class RecipeInvalid(MMCoreError):
    """One or more recipe problems; ``errors`` holds each located :class:`RecipeError`."""

    def __init__(self, errors: list[RecipeError]):
        self.errors = errors
        head = f"recipe is invalid ({len(errors)} problem{'s' if len(errors) != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {e}" for e in errors)]))


class Checker:
    """Problems found so far in one recipe, and the checks that add to them."""

    def __init__(self, recipe: Recipe, registry: Registry):
        self.recipe, self.registry = recipe, registry
        self.errors: list[RecipeError] = []
        self.declared: list[str] = []
        self.checkpoint_every: Any = 0  # the recipe-wide default of each stage's and fine-tuning's
        self.num_workers: Any = 0  # likewise
        self.world_size = env_world_size()  # processes that will share each batch (torchrun's WORLD_SIZE)

    def fail(self, key: KeyPath, message: str) -> None:
        self.errors.append(self.recipe.error(key, message))

    def keys(self, mapping: Any, allowed: Any, key: KeyPath, what: str) -> bool:
        if not isinstance(mapping, dict):
            self.fail(key, f"{what} must be a mapping, got {type(mapping).__name__}")
            return False
        for name in mapping:
            if name not in allowed:
                self.fail((*key, str(name)), f"unknown key {name!r} in {what}{did_you_mean(str(name), allowed)}; "
                                             f"allowed: {', '.join(sorted(allowed))}")
        return True

    def number(self, value: Any, key: KeyPath, *, integer: bool = False, minimum: float | None = None,
               exclusive: bool = False, maximum: float | None = None) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.fail(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
            return
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            self.fail(key, f"must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be <= {maximum}, got {value!r}")

    def entry(self, kind: str, name: Any, key: KeyPath) -> Any:
        if not isinstance(name, str):
            self.fail(key, f"{kind} name must be a string, got {name!r}")
            return None
        try:
            return self.registry.get(kind, name)
        except UnknownNameError as exc:
            self.fail(key, str(exc))
            return None

    def options(self, given: Any, defaults: dict[str, Any], key: KeyPath, what: str, extra: set[str] = frozenset(),
                typed: bool = True, types: dict[str, Any] | None = None) -> dict:
        """``given`` merged over ``defaults``; unknown names fail, and (``typed``) each value must have its option's
        type: the declared one in ``types``, else its default's."""
        given = {} if given is None else given
        if not self.keys(given, set(defaults) | set(extra), key, what):
            return dict(defaults)
        if typed:
            for name, value in given.items():
                if name in defaults:
                    self.like(value, defaults[name], (*key, str(name)), option_type(defaults, types or {}, name))
        return {**copy.deepcopy(defaults), **given}

    def value(self, declared: Key, value: Any, key: KeyPath) -> None:
        """A number against its recipe key's declared type and bounds (a null passes where the type allows it)."""
        if value is None and conforms(None, declared.type):
            return
        self.number(value, key, integer=declared.integer, minimum=declared.minimum, exclusive=declared.exclusive,
                    maximum=declared.maximum)

    def located(self, key: KeyPath) -> str:
        """``file:line: key`` of a key path, as a recipe error names it (for checks made after validation)."""
        file, line = self.recipe.where(key)
        return f"{file}{f':{line}' if line is not None else ''}: {format_key(key)}"

    def plugin_options(self, entry: Any, options: dict[str, Any], key: KeyPath) -> None:
        """The plugin's own check of its resolved options: its class's or factory's ``check_options(options)``, if
        declared, once the options' names and types have passed (a rejected value fails at its key)."""
        check = getattr(entry.factory, "check_options", None)
        prefix = format_key(key)
        if check is None or any((e.key or "").startswith(prefix) for e in self.errors):
            return
        label = self.registry.label(entry.origin)
        try:
            check(dict(options))
        except OptionError as exc:
            self.fail((*key, exc.option), f"{entry.kind} {entry.name!r} ({label}): {exc}")
        except (MMCoreError, ValueError, TypeError) as exc:
            self.fail(key, f"{entry.kind} {entry.name!r} ({label}) rejects its options: {exc}")

    def like(self, value: Any, default: Any, key: KeyPath, annotation: Any) -> None:
        """A plugin option must have its type (ints pass for floats)."""
        if not conforms(value, annotation):
            self.fail(key, f"must be {describe(annotation)} (default {default!r}), got {value!r}")
