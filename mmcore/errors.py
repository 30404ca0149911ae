"""User-facing errors: the CLI prints them without a traceback and exits with their ``exit_code``.

Exit codes of ``mmcore``: 0 success; 1 a bug (a plugin's code raised: the plugin is named, see mmcore.blame; or
an unexpected error in mmcore, with its traceback); 2 a recipe or usage error (:class:`MMCoreError`,
:class:`RecipeError`, :class:`PluginError`, and click's own usage errors); 3 a data error (:class:`DataError`: a
missing, truncated or malformed data file); 4 a run that started and failed (:class:`RunFailed`: the loss became
NaN or infinite).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MMCoreError(Exception):
    """An error the user can fix (bad recipe, unknown plugin, missing file); printed without a traceback."""

    exit_code = 2


class RecipeError(MMCoreError):
    """A recipe problem, located by file, key path and (when known) line."""

    def __init__(self, message: str, file: str | None = None, key: str | None = None, line: int | None = None):
        self.message, self.file, self.key, self.line = message, file, key, line
        where = file or "<recipe>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")


class PluginError(MMCoreError):
    """A plugin failed to load or registered something inconsistent."""


class DataError(MMCoreError):
    """Data that cannot be read as it should (missing, truncated or malformed files); exit code 3."""

    exit_code = 3


class RunFailed(MMCoreError):
    """A run that started and then failed (the loss became NaN or infinite); exit code 4."""

    exit_code = 4


class OptionError(ValueError):
    """An option value a plugin rejects: raise it from ``check_options`` or a constructor to name the option
    (the recipe error then points at that option's key)."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(message)


class UnknownNameError(MMCoreError):
    """A plugin name that nothing registered; the message lists what exists."""

    def __init__(self, kind: str, name: str, known: Iterable[str], broken: Iterable[str] = ()):
        self.kind, self.name, self.known = kind, name, sorted(known)
        hint = "".join(f"; {b}" for b in broken)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.known)}; known {kind}s: "
                         f"{', '.join(self.known) or '(none)'}{hint}")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
