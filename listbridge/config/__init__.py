"""Settings: one table of options drives the defaults, validation, `init` and the docs.

A TOML file is layered over the embedded defaults. Unknown keys get a warning; invalid values
raise ConfigError with one clear sentence. Settings are passed explicitly, never global.

The package, by what each part does: options (the table), settings (the dataclasses), build
(checks and defaults), secret (files that hold secrets), files (finding and reading the file).
"""

from listbridge.config.build import build_settings, comment_folder
from listbridge.config.files import CONFIG_ENV, DEFAULT_CONFIG_NAME, config_path, load_settings, render_default_config
from listbridge.config.options import OPTIONS, SEPARATORS, ConfigError, ConfigWarning, Option
from listbridge.config.secret import secret_file
from listbridge.config.settings import (
    FORUM_SCHEME,
    BounceSettings,
    DatabaseSettings,
    ListSettings,
    RelaySettings,
    Settings,
    SiteSettings,
    SmtpSettings,
    SubscriptionSettings,
    WatchSettings,
    WebSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_NAME",
    "FORUM_SCHEME",
    "OPTIONS",
    "SEPARATORS",
    "BounceSettings",
    "ConfigError",
    "ConfigWarning",
    "DatabaseSettings",
    "ListSettings",
    "Option",
    "RelaySettings",
    "Settings",
    "SiteSettings",
    "SmtpSettings",
    "SubscriptionSettings",
    "WatchSettings",
    "WebSettings",
    "build_settings",
    "comment_folder",
    "config_path",
    "load_settings",
    "render_default_config",
    "secret_file",
]
