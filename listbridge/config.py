"""Settings: one table of options drives the defaults, validation, `init` and the docs.

A TOML file is layered over the embedded defaults. Unknown keys get a warning; invalid values
raise ConfigError with one clear sentence. Settings are passed explicitly, never global.
"""

from __future__ import annotations

import math
import os
import posixpath
import tomllib
import urllib.parse
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

CONFIG_ENV = "LISTBRIDGE_CONFIG"
# The separator must be allowed unquoted in a local part (RFC 5322 atext, letters and digits
# excepted, and "." which may not start, end or repeat there).
SEPARATORS = "!#$%&'*+-/=?^_`{|}~"
DEFAULT_CONFIG_NAME = "listbridge.toml"


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


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    lmtp: bool
    max_message_size: int
    data_timeout: float
    separator: str


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int
    security: str
    username: str
    password_file: str
    connections: int
    personalize: bool
    timeout: float
    retry_days: float
    helo: str

    def password(self) -> str:
        """The AUTH password: ConfigError when the file is readable by its group or others."""
        return secret_file(self.password_file, "[relay] password_file").strip() if self.password_file else ""


@dataclass(frozen=True)
class SubscriptionSettings:
    confirm_days: float
    confirm_limit: int


@dataclass(frozen=True)
class SiteSettings:
    repo: str
    posts: str
    comments_dir: str
    base_url: str
    push: bool
    formats: tuple[str, ...]
    web_url: str

    @property
    def html(self) -> bool:
        """Whether HTML pages are written beside the gemtext ones."""
        return "html" in self.formats


@dataclass(frozen=True)
class ListSettings:
    address: str
    title: str
    owner: str
    moderators: tuple[str, ...]
    language: str
    moderation: str
    authserv_id: str
    templates: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    max_comment_chars: int
    keep_from: bool
    # Where its pages go, relative to the repo: build_settings fills an empty one with [site]'s
    # (a status list has none).
    comments_dir: str
    kind: str = "comments"

    @property
    def status_only(self) -> bool:
        """A list whose subscribers get outage notices and nothing else (no comments)."""
        return self.kind == "status"

    @property
    def moderating(self) -> tuple[str, ...]:
        """Who is told of held comments and may decide on them by mail: the owner, then the
        moderators, each once."""
        return tuple(dict.fromkeys(a.lower() for a in (self.owner, *self.moderators) if a))

    @property
    def local(self) -> str:
        return self.address.rsplit("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]


@dataclass(frozen=True)
class BounceSettings:
    threshold: int
    stale_days: float
    warnings: int
    warning_days: float


@dataclass(frozen=True)
class WebSettings:
    listen: str
    base_url: str

    def address(self) -> tuple[str, int]:
        """The listener's host and port (checked by build_settings)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def unsubscribe_url(self, token: str) -> str:
        """The one-click unsubscribe URL of a subscriber's token ("" without base_url)."""
        return f"{self.base_url.rstrip('/')}/unsubscribe/{token}" if self.base_url else ""


FORUM_SCHEME = "discourse+"  # a channel that is the Discourse forum of [watch] forum_url


@dataclass(frozen=True)
class WatchSettings:
    mx: str
    interval: int
    failures: int
    recoveries: int
    roster: str
    timeout: float
    starttls: bool
    roster_max_age: float
    home_domains: tuple[str, ...]
    notify: tuple[str, ...]
    notify_file: str
    forum_url: str
    forum_api_key_file: str
    forum_user: str
    forum_category: int

    def channels(self) -> tuple[str, ...]:
        """Every channel: the apprise URLs of `notify`, then the lines of `notify_file`
        (secret_file rules), then the forum as FORUM_SCHEME + its URL."""
        lines = secret_file(self.notify_file, "[watch] notify_file").splitlines() if self.notify_file else []
        extra = (line.strip() for line in lines)
        forum = [FORUM_SCHEME + self.forum_url.rstrip("/")] if self.forum_url else []
        return tuple(dict.fromkeys([*self.notify, *(u for u in extra if u and not u.startswith("#")), *forum]))


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    smtp: SmtpSettings
    relay: RelaySettings
    subscriptions: SubscriptionSettings
    site: SiteSettings
    lists: tuple[ListSettings, ...]
    watch: WatchSettings
    bounces: BounceSettings
    web: WebSettings
    source: Path | None = field(default=None, compare=False)

    @property
    def comments_dirs(self) -> tuple[str, ...]:
        """Every list's comment folder: the post scan skips them all."""
        return tuple(m.comments_dir for m in self.lists)

    def dark_domains(self) -> frozenset[str]:
        """The domains whose mail cannot be read while the watched MX is down."""
        return frozenset(self.watch.home_domains or (mlist.domain for mlist in self.lists))

    def list_for(self, address: str) -> ListSettings | None:
        """The configured list whose address is `address` (case-insensitive)."""
        wanted = address.lower()
        for mlist in self.lists:
            if mlist.address.lower() == wanted:
                return mlist
        return None


def build_settings(data: dict[str, Any], source: Path | None = None) -> Settings:
    """Settings from parsed TOML `data`, layered over the embedded defaults."""
    for section, value in data.items():
        if section in OPTIONS:
            continue
        for key in value if isinstance(value, dict) else ():
            warnings.warn(f"no such option: [{section}] {key}", ConfigWarning, stacklevel=2)
        if not isinstance(value, dict):
            warnings.warn(f"no such option: {section}", ConfigWarning, stacklevel=2)

    def table(name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table.")
        return _values(name, value, name)

    raw_lists = data.get("lists", [{}])
    if not isinstance(raw_lists, list) or not raw_lists:
        raise ConfigError("[[lists]] must hold at least one list.")
    lists = []
    for index, entry in enumerate(raw_lists):
        if not isinstance(entry, dict):
            raise ConfigError("each [[lists]] entry must be a table.")
        values = _values("lists", entry, f"lists {index + 1}")
        values["address"] = values["address"].strip().lower()
        _check_list_address(values["address"], index)
        if values["owner"] and not _is_address(values["owner"]):
            raise ConfigError(f"[[lists]] entry {index + 1} has an invalid owner address {values['owner']!r}.")
        for moderator in values["moderators"]:
            if not _is_address(moderator):
                raise ConfigError(f"[[lists]] entry {index + 1} has an invalid moderator address {moderator!r}.")
        lists.append(ListSettings(**values))
    if len({m.address for m in lists}) != len(lists):
        raise ConfigError("two [[lists]] entries have the same address.")

    smtp = SmtpSettings(**table("smtp"))
    if len(smtp.separator) != 1 or smtp.separator not in SEPARATORS:
        raise ConfigError(f"[smtp] separator must be one punctuation character such as + or -, not {smtp.separator!r}.")
    for mlist in lists:
        if smtp.separator in mlist.local:
            raise ConfigError(f"list address {mlist.address} contains the separator {smtp.separator!r}.")
    relay = RelaySettings(**table("relay"))
    subs = SubscriptionSettings(**table("subscriptions"))
    database = DatabaseSettings(**table("database"))
    if not database.url.strip():
        raise ConfigError("[database] url must not be empty.")
    watch = WatchSettings(**table("watch"))
    host, colon, port = watch.mx.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[watch] mx must be HOST:PORT, not {watch.mx!r}.")
    site = _site(SiteSettings(**table("site")))
    web = _web(WebSettings(**table("web")))
    return Settings(
        database=database,
        smtp=smtp,
        relay=relay,
        subscriptions=subs,
        site=site,
        lists=_with_comment_folders(lists, site),
        watch=watch,
        bounces=BounceSettings(**table("bounces")),
        web=web,
        source=source,
    )


def _site(site: SiteSettings) -> SiteSettings:
    """[site] formats: gemtext always, html besides; web_url an https URL."""
    unknown = sorted(set(site.formats) - {"gemtext", "html"})
    if unknown or "gemtext" not in site.formats:
        raise ConfigError(f'[site] formats must be ["gemtext"] or ["gemtext", "html"], not {list(site.formats)!r}.')
    url = site.web_url.strip()
    if url and not _is_web_url(url):
        raise ConfigError(f"[site] web_url must be an https:// URL (ASCII, no query), not {url!r}.")
    if url and "html" not in site.formats:
        warnings.warn(
            '[site] web_url is set but formats has no "html": mail keeps linking the gemtext pages',
            ConfigWarning,
            stacklevel=3,
        )
    return replace(site, formats=tuple(dict.fromkeys(site.formats)), web_url=url.rstrip("/"))


def _is_web_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return (
        parts.scheme.lower() in ("https", "http")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and url.isascii()
        and len(url) <= 200
        and not any(c in url for c in ' <>"\\,\r\n')
    )


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


def _web(web: WebSettings) -> WebSettings:
    """[web] checked: listen is HOST:PORT, base_url an http(s) URL; http only with a warning,
    since RFC 8058 asks for https (fine for a loopback test)."""
    if web.listen:
        host, colon, port = web.listen.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"[web] listen must be HOST:PORT, such as 127.0.0.1:8080, not {web.listen!r}.")
    url = web.base_url.strip()
    if url:
        if not _is_web_url(url):
            raise ConfigError(f"[web] base_url must be an https:// URL (ASCII, no query), not {url!r}.")
        if not web.listen:
            warnings.warn(
                "[web] base_url is set but listen is empty: mail will carry links this serve does not answer",
                ConfigWarning,
                stacklevel=3,
            )
        if url.lower().startswith("http:"):
            warnings.warn(
                f"[web] base_url {url} is http: mail clients expect https for one-click unsubscribe",
                ConfigWarning,
                stacklevel=3,
            )
    return WebSettings(listen=web.listen.strip(), base_url=url.rstrip("/"))


def _with_comment_folders(lists: list[ListSettings], site: SiteSettings) -> tuple[ListSettings, ...]:
    """The lists with their own comment folder, normalised (an empty one is the site's). Two
    lists writing to one folder would overwrite each other's index and feed, and a rebuild
    deletes the stale pages of a list's folder: it may be neither the root nor the posts."""
    placed: dict[str, str] = {}
    out = []
    for mlist in lists:
        if mlist.status_only:  # no comments, no folder: it collides with no list
            out.append(replace(mlist, comments_dir=""))
            continue
        given = mlist.comments_dir or site.comments_dir
        key = "[[lists]] comments_dir" if mlist.comments_dir else "[site] comments_dir"
        folder = comment_folder(given)
        if folder is None or folder == comment_folder(site.posts):
            raise ConfigError(
                f"{key} of list {mlist.address} must be a folder inside the site repo "
                f"other than [site] posts, not {given!r}."
            )
        if folder in placed:
            raise ConfigError(
                f"lists {placed[folder]} and {mlist.address} would both write their comments "
                f"to {folder}/: give each its own [[lists]] comments_dir."
            )
        placed[folder] = mlist.address
        out.append(replace(mlist, comments_dir=folder))
    return tuple(out)


def comment_folder(path: str) -> str | None:
    """`path` as a folder relative to the repo root, or None when it is the root or outside it.

    >>> comment_folder("/log//commentaires/"), comment_folder("./a/../b"), comment_folder("."), comment_folder("../x")
    ('log/commentaires', 'b', None, None)
    """
    folder = posixpath.normpath(path.strip().strip("/") or ".")
    if folder == "." or folder == ".." or folder.startswith("../"):
        return None
    return folder


def _check_list_address(address: str, index: int) -> None:
    if not _is_address(address):
        raise ConfigError(f"[[lists]] entry {index + 1} has an invalid address {address!r}.")


def _is_address(address: str) -> bool:
    """local@domain, with no space, control character, quote or bracket anywhere."""
    local, at, domain = address.partition("@")
    bad = set(' "<>()[],;:\\@')
    return bool(
        at
        and local
        and domain
        and not (bad & set(local + domain))
        and address.isprintable()
        and not domain.startswith(".")
        and not domain.endswith(".")
    )


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
