"""Shared output helpers: --json listings, tables and progress (bar on a terminal, a last line elsewhere)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click


def emit(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    """Print rows as JSON (one array) or as an aligned table of `columns`."""
    if as_json:
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress callback, safe to call from worker threads: on a terminal, one bar redrawn in
    place; elsewhere (a log, a pipe) nothing until the one final line."""
    lock = threading.Lock()
    if sys.stderr.isatty():
        with click.progressbar(length=total or 0, label=label, file=sys.stderr) as bar:

            def redraw(n: int) -> None:
                with lock:
                    bar.update(n)

            yield redraw
        return
    done = 0

    def count(n: int) -> None:
        nonlocal done
        with lock:
            done += n

    yield count
    click.echo(f"{label}: {done}" + (f"/{total}" if total else "") + " done", err=True)
