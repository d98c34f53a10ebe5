"""Where the configuration file is, reading it, and the commented one `init` writes."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from listbridge.config.build import build_settings
from listbridge.config.options import OPTIONS, ConfigError
from listbridge.config.settings import Settings

CONFIG_ENV = "LISTBRIDGE_CONFIG"
DEFAULT_CONFIG_NAME = "listbridge.toml"


def config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Which file to read: --config, then $LISTBRIDGE_CONFIG, then ./listbridge.toml, else none."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.exists() else None


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration file (if any) and return validated settings."""
    path = config_path(explicit)
    if path is None:
        return build_settings({})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}.") from None
    return build_settings(data, source=path)


def render_default_config() -> str:
    """A commented listbridge.toml with every option at its default (for `listbridge init`)."""
    lines = ["# listbridge configuration. Every option is shown with its default value.", ""]
    for section, options in OPTIONS.items():
        lines.append(f"[[{section}]]" if section == "lists" else f"[{section}]")
        for option in options:
            note = option.help + (f" ({' | '.join(option.choices)})" if option.choices else "")
            lines.append(f"# {note}")
            lines.append(f"{option.key} = {_toml_value(option.default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
