"""The command line's two consoles (tables on stdout, messages and progress on stderr) and its error printer."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from mmcore.errors import MMCoreError


def stdout_console() -> Console:
    """A console for tables: the terminal's width, or wide enough not to cut columns when piped to a file."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 220))


def stderr_console() -> Console:
    """A console for messages and progress: in a log file (no terminal) lines are never wrapped, so run paths
    and error messages stay whole and greppable."""
    probe = Console(stderr=True)
    return probe if probe.is_terminal else Console(stderr=True, soft_wrap=True, width=max(probe.width, 220))


err_console = stderr_console()


def print_error(exc: MMCoreError) -> None:
    """A user error as one red ``error:`` message on stderr (no traceback)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
