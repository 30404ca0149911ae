"""Name the plugin when plugin code raises during a run: which entry point, distribution and version, which hook or
method, and where in the run (stage or fine-tuning, step, epoch), followed by the plugin's own last frames.

The engine calls plugin code inside :func:`blame`; an exception that is not an :class:`~mmcore.errors.MMCoreError`
(those are messages plugins mean for the user) becomes a :class:`PluginFailure`. The training loop keeps
:data:`position` current, so the failure can say at which step it happened. The engine writes the full traceback
to ``errors.log`` in the run directory (:meth:`PluginFailure.write_log`); ``mmcore run --debug`` (or, for any
command, ``MMCORE_DEBUG=1``) prints it too.
"""

from __future__ import annotations

import inspect
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError
from mmcore.registry import Entry, Registry

LOG_NAME = "errors.log"
FRAMES = 3  # the plugin's last frames shown in the message


@dataclass
class Position:
    """Where the run is: ``scope`` (``stage 'token'``, ``fine-tuning 'vqa'``, ...), the step being taken, its epoch."""

    scope: str = ""
    step: int | None = None
    epoch: int | None = None

    def enter(self, scope: str) -> None:
        """A new stage, fine-tuning or evaluation begins: no step yet."""
        self.scope, self.step, self.epoch = scope, None, None

    def describe(self) -> str:
        """``stage 'token', step 3, epoch 0`` (what is known)."""
        parts = [self.scope] if self.scope else []
        parts += [f"step {self.step}"] if self.step is not None else []
        parts += [f"epoch {self.epoch}"] if self.epoch is not None else []
        return ", ".join(parts)


position = Position()
_debug = False


def enable_debug() -> None:
    """``mmcore run --debug``: failures print the full traceback after their paragraph."""
    global _debug
    _debug = True


class PluginFailure(MMCoreError):
    """Plugin code raised during a run; the message names the plugin, the method and the place in the run."""

    exit_code = 1  # not a recipe problem: a bug to report to the plugin's authors (or to fix in one's own)

    def __init__(self, label: str, entry: Entry, method: str, error: BaseException, where: str) -> None:
        self.label, self.entry, self.method, self.error, self.where = label, entry, method, error, where
        self.log: Path | None = None
        super().__init__(f"{entry.kind} {entry.name!r} ({label}) failed in {method}()")

    def frames(self) -> list[traceback.FrameSummary]:
        """The last frames of the traceback inside the plugin's own files (else the last frames at all)."""
        frames = traceback.extract_tb(self.error.__traceback__)
        root = _source_root(self.entry.factory)
        own = [f for f in frames if root is not None and Path(f.filename).resolve().is_relative_to(root)]
        return (own or frames)[-FRAMES:]

    def full_traceback(self) -> str:
        """The whole traceback of the plugin's exception."""
        return "".join(traceback.format_exception(self.error))

    def write_log(self, run_dir: Path) -> None:
        """Append the full traceback to ``run_dir/errors.log`` (the whole file rewritten atomically)."""
        from mmcore.rundir import atomic_write_text

        path = run_dir / LOG_NAME
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_text(path, f"{before}--- {stamp} {self.headline()}\n{self.full_traceback()}\n")
        self.log = path

    def headline(self) -> str:
        """The paragraph's first sentence."""
        where = f" during {self.where}" if self.where else ""
        return (f"{self.entry.kind} {self.entry.name!r} of {self.label} raised {type(self.error).__name__}: "
                f"{self.error} in {self.method}(){where}.")

    def __str__(self) -> str:
        lines = [self.headline(), "The plugin's last frames:"]
        lines += [f"  {Path(f.filename).name}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in self.frames()]
        if self.where.startswith("mmcore "):  # a command other than a run: nothing to resume
            lines.append("Full traceback: set MMCORE_DEBUG=1.")
        else:
            more = f"Full traceback: {self.log}" if self.log else "Full traceback: mmcore run --debug"
            lines.append(f"{more}. The run directory is kept: fix the plugin and continue with mmcore run --resume.")
        if _debug or os.environ.get("MMCORE_DEBUG"):
            lines += ["", self.full_traceback()]
        return "\n".join(lines)


def _source_root(factory: Any) -> Path | None:
    """The plugin's package directory (or its single file) where ``factory`` is defined."""
    try:
        file = Path(inspect.getfile(factory)).resolve()
    except (TypeError, OSError):
        return None
    return file.parent if file.name == "__init__.py" or (file.parent / "__init__.py").exists() else file


@contextmanager
def blame(registry: Registry, entry: Entry, method: str, where: str | None = None) -> Iterator[None]:
    """Run plugin code; an exception other than an :class:`MMCoreError` becomes a :class:`PluginFailure` naming
    ``entry``'s plugin, ``method`` and ``where`` (default: the current :data:`position`)."""
    try:
        yield
    except MMCoreError:
        raise
    except Exception as exc:
        raise PluginFailure(registry.label(entry.origin), entry, method, exc,
                            position.describe() if where is None else where) from exc


def call(registry: Registry, entry: Entry, method: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` inside :func:`blame` (for one-line call sites)."""
    with blame(registry, entry, method):
        return fn(*args, **kwargs)


@contextmanager
def blame_hook(registry: Registry, manager: Any, hook: str) -> Iterator[None]:
    """Run a pluggy hook; an exception is blamed on the registered plugin (a logger object, a plugin module)
    whose code is deepest in the traceback."""
    try:
        yield
    except MMCoreError:
        raise
    except Exception as exc:
        found = _hook_plugin(manager, exc)
        if found is None:
            raise
        name, plugin = found
        kind, short = ("logger", name.split(":", 1)[1]) if name.startswith("mmcore-logger:") else ("plugin", name)
        factory = plugin if inspect.ismodule(plugin) else type(plugin)
        origin = name if kind != "logger" else next((e.origin for e in registry.entries(kind) if e.name == short),
                                                    short)
        entry = Entry(kind, short, factory, origin)
        raise PluginFailure(registry.label(origin), entry, hook, exc, position.describe()) from exc


def _hook_plugin(manager: Any, exc: BaseException) -> tuple[str, Any] | None:
    """(name, plugin) of the registered plugin whose frame is deepest in ``exc``'s traceback."""
    by_object = {id(plugin): (name, plugin) for name, plugin in manager.list_name_plugin()}
    files = {}
    for name, plugin in manager.list_name_plugin():
        if inspect.ismodule(plugin) and getattr(plugin, "__file__", None):
            files[str(Path(plugin.__file__).resolve())] = (name, plugin)
    tb, found = exc.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        owner = by_object.get(id(frame.f_locals.get("self")))
        found = owner or files.get(str(Path(frame.f_code.co_filename).resolve())) or found
        tb = tb.tb_next
    return found


@contextmanager
def failures_logged(run_dir: Path | None) -> Iterator[None]:
    """A :class:`PluginFailure` leaving the block has its full traceback written to ``run_dir/errors.log`` first
    (``None``: a process that does not write the run directory)."""
    try:
        yield
    except PluginFailure as exc:
        if run_dir is not None:
            exc.write_log(run_dir)
        raise
