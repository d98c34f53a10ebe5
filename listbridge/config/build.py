"""Settings from parsed TOML, layered over the embedded defaults, every value checked: an
unknown key is a warning, an invalid value one ConfigError sentence."""

from __future__ import annotations

import posixpath
import urllib.parse
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from listbridge.config.options import OPTIONS, SEPARATORS, ConfigError, ConfigWarning, _values
from listbridge.config.settings import (
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
