"""Where the shipped templates and migrations live: inside the wheel, or in the source tree."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_path(name: str) -> Path:
    """Path of the shipped folder `name` ("templates" or "migrations")."""
    installed = _PACKAGE / "_shipped" / name  # mapped there by the wheel build
    if installed.is_dir():
        return installed
    source = _PACKAGE.parent / name  # running from a checkout
    if source.is_dir():
        return source
    raise FileNotFoundError(f"listbridge is missing its {name} folder (looked in {installed} and {source})")
