"""What a configuration becomes: one frozen dataclass per section, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from listbridge.config.secret import secret_file


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
