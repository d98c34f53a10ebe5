"""Files that hold secrets (a relay password, channel URLs, a forum key): read only when no
one but their owner can."""

from __future__ import annotations

import os

from listbridge.config.options import ConfigError


def secret_file(path: str, option: str) -> str:
    """The content of a file that holds secrets; ConfigError (one sentence) when it cannot be
    read, or when its group or others may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise ConfigError(f"{option} {path} can be read by others (mode {mode & 0o777:o}): chmod 600 it.")
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{option} {path} cannot be read: {exc.strerror}.") from exc
