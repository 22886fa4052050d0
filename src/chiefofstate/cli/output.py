"""How every `cos` command prints: rich tables for a person at a terminal, never cut when the output
goes to a pipe or a file, and `--json` for scripts (the fields are listed in docs/cli.md)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

AsJson = Annotated[
    bool,
    typer.Option("--json", help="print JSON (fields in docs/cli.md) instead of tables", show_default=False),
]

# Wide enough for any row a command prints: rich cuts a table to the console's width, and without a
# terminal it would assume 80 columns. A table is only as wide as its content, so nothing pads to this.
_UNBOUNDED_WIDTH = 100_000


def make_console(stderr: bool = False) -> Console:
    """A console that wraps to the terminal's width, and does not wrap or cut at all otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    probe = Console(file=stream)
    if probe.is_terminal:
        return probe
    return Console(file=stream, width=_UNBOUNDED_WIDTH, soft_wrap=True)


def print_json(document: Any, *, lines: bool = False) -> None:
    """One JSON document (indented), or with `lines` one compact document per line for a stream; each
    line is flushed at once so a consumer reading a pipe sees it as it happens."""
    if lines:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: int = 1) -> typer.Exit:
    """Prints `error: message` as one line on stderr; `raise fail(...)` ends the command with `code`."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)
