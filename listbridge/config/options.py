"""The one table of options: defaults, types, bounds and help, read by build_settings, `init`
and the README's checks; and the errors and warnings a configuration raises."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

# The separator must be allowed unquoted in a local part (RFC 5322 atext, letters and digits
# excepted, and "." which may not start, end or repeat there).
SEPARATORS = "!#$%&'*+-/=?^_`{|}~"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message is one sentence for the user."""


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # numbers only
    maximum: float | None = None
    fold: bool = True  # lists of strings: lower-cased (addresses); not URLs that hold tokens


# The table of every option: section -> options. `[[lists]]` entries use the "lists" section.
OPTIONS: dict[str, tuple[Option, ...]] = {
    "database": (
        Option("url", "sqlite:///listbridge.sqlite3", "SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://…"),
    ),
    "smtp": (
        Option("host", "127.0.0.1", "address listbridge listens on"),
        Option("port", 8025, "port listbridge listens on", minimum=1, maximum=65535),
        Option("lmtp", False, "speak LMTP instead of SMTP"),
        Option("max_message_size", 1048576, "larger messages are refused with 552", minimum=1),
        Option(
            "data_timeout",
            120.0,
            "seconds one DATA may take in all; a slower client gets 421",
            minimum=0.1,
            maximum=300,
        ),
        Option("separator", "+", "separator between the list name and its sub-address"),
    ),
    "relay": (
        Option("host", "127.0.0.1", "SMTP relay that delivers outgoing mail"),
        Option("port", 25, "relay port", minimum=1, maximum=65535),
        Option("security", "none", "transport security to the relay", ("none", "starttls", "ssl")),
        Option("username", "", "AUTH user name (empty: no AUTH)"),
        Option("password_file", "", "file holding the AUTH password"),
        Option("connections", 4, "parallel SMTP sessions to the relay", minimum=1),
        Option("personalize", True, "one message per recipient, with its own unsubscribe token"),
        Option("timeout", 30.0, "seconds before a relay operation times out", minimum=0.001),
        Option("retry_days", 5.0, "how long a temporary failure is retried before giving up", minimum=0),
        Option("helo", "", "name announced in EHLO (empty: this host's name)"),
    ),
    "subscriptions": (
        Option("confirm_days", 7.0, "days a confirmation token stays valid", minimum=0.001),
        Option("confirm_limit", 3, "confirmation mails per address per 24 hours", minimum=1),
    ),
    "site": (
        Option("repo", "site", "git work tree of the site; created if missing"),
        Option("posts", "log", "folder of the posts, to match comment subjects"),
        Option(
            "comments_dir", "log/commentaires", "folder of the comment archive (a list's own comments_dir overrides it)"
        ),
        Option("base_url", "gemini://localhost", "public URL of the site"),
        Option("push", False, "push the site repo after each commit"),
        Option("formats", ("gemtext",), 'pages written: "gemtext", and "html" for a www site'),
        Option("web_url", "", "where the repo is served over https (empty: links go to base_url)"),
    ),
    "lists": (
        Option("address", "bla@localhost", "the list address"),
        Option("title", "bla", "the list's name in subjects and texts"),
        Option("owner", "", "address of the list owner (+owner mail goes there)"),
        Option("moderators", (), "addresses told of held comments, who approve or reject by mail, besides owner"),
        Option("language", "en", "language of the texts", ("fr", "en")),
        Option("moderation", "first-post", "which comments are held", ("all", "first-post", "none")),
        Option("authserv_id", "", "trusted authserv-id in Authentication-Results"),
        Option("templates", "", "folder whose templates override the shipped ones"),
        Option("allow", (), "addresses or @domains whose comments are never held"),
        Option("deny", (), "addresses or @domains whose comments are always rejected"),
        Option("max_comment_chars", 20000, "longer comments are held for the moderator", minimum=1),
        Option("keep_from", False, "broadcast with the commenter's own From (not DMARC-safe)"),
        Option("comments_dir", "", "this list's folder of the comment archive (empty: [site] comments_dir)"),
        Option(
            "kind", "comments", "comments, or status: a list that only carries outage notices", ("comments", "status")
        ),
    ),
    "bounces": (
        Option("threshold", 5, "bounce score at which delivery to a subscriber is turned off", minimum=1),
        Option("stale_days", 7.0, "days without a bounce after which a score starts over", minimum=0.001),
        Option("warnings", 3, "notices a disabled subscriber gets before removal", minimum=0),
        Option("warning_days", 7.0, "days between those notices, and from the last to removal", minimum=0.001),
    ),
    "web": (
        Option("listen", "", "HOST:PORT of the HTTP listener for one-click unsubscribe (empty: none)"),
        Option("base_url", "", "its public URL, https:// behind a reverse proxy (empty: no link in mail)"),
    ),
    "watch": (
        Option("mx", "localhost:25", "the home MX to probe, HOST:PORT"),
        Option("interval", 60, "seconds between probes", minimum=1),
        Option("failures", 3, "consecutive failures before an outage is declared", minimum=1),
        Option("recoveries", 2, "consecutive successes before it is resolved", minimum=1),
        Option("roster", "roster.sqlite3", "roster snapshot used by the watcher"),
        Option("timeout", 10.0, "seconds each probe step may take", minimum=0.1),
        Option("starttls", False, "also require STARTTLS to be offered and to work"),
        Option("roster_max_age", 48.0, "hours after which an old roster is reported", minimum=0.1),
        Option("home_domains", (), "domains whose mailboxes live on the watched MX (default: the lists' domains)"),
        Option(
            "notify", (), "apprise URLs that outage events are posted to (mastodon://, ntfy://, json://…)", fold=False
        ),
        Option("notify_file", "", "a file of more such URLs, one a line, readable by its owner only"),
        Option("forum_url", "", "a Discourse forum to post outages to: a topic, then a reply per update"),
        Option("forum_api_key_file", "", "the file of its API key, readable by its owner only"),
        Option("forum_user", "system", "the forum user the posts are made as"),
        Option("forum_category", 0, "the forum category id of the topics (0: none)", minimum=0),
    ),
}


def _values(section: str, given: dict[str, Any], where: str) -> dict[str, Any]:
    """Overlay `given` on the defaults of `section`, checking types and choices."""
    options = {o.key: o for o in OPTIONS[section]}
    for key in given:
        if key not in options:
            warnings.warn(f"no such option: [{section}] {key}", ConfigWarning, stacklevel=3)
    out: dict[str, Any] = {}
    for key, option in options.items():
        value = given.get(key, option.default)
        expected = type(option.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = tuple(v.strip().lower() if option.fold else v.strip() for v in value)
        if type(value) is not expected:
            raise ConfigError(f"[{where}] {key} must be {_type_name(expected)}, not {value!r}.")
        if option.choices and value not in option.choices:
            raise ConfigError(f"[{where}] {key} must be one of {', '.join(option.choices)}, not {value!r}.")
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"[{where}] {key} must be a finite number, not {value!r}.")
        if option.minimum is not None and value < option.minimum:
            raise ConfigError(f"[{where}] {key} must be at least {option.minimum:g}, not {value!r}.")
        if option.maximum is not None and value > option.maximum:
            raise ConfigError(f"[{where}] {key} must be at most {option.maximum:g}, not {value!r}.")
        out[key] = value
    return out


def _type_name(t: type) -> str:
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        tuple: "a list of strings",
    }[t]


class ConfigWarning(UserWarning):
    """An unknown key in the configuration file."""
