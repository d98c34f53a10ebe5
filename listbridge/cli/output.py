"""Shared output helpers: --json listings, tables and progress (bar on a terminal, lines elsewhere)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

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
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress callback: a bar on a terminal, one line per 10% (or per 1,000) otherwise."""
    if sys.stderr.isatty():
        with click.progressbar(length=total or 0, label=label, file=sys.stderr) as bar:
            yield bar.update
        return
    done = 0
    step = max(1, (total or 10_000) // 10)
    mark = step

    def update(n: int) -> None:
        nonlocal done, mark
        done += n
        while done >= mark:
            click.echo(f"{label}: {done}" + (f"/{total}" if total else ""), err=True)
            mark += step

    yield update
    click.echo(f"{label}: {done} done", err=True)
