"""The published archive as a Gemini reader gets it: a real Gemini server (jetforce) serves the
site repo over TLS on loopback, and a few lines of `ssl` socket code fetch the pages that
listbridge wrote through its real publishing path (database -> render -> git site repo)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urljoin

import pytest

from listbridge.archive import publish
from listbridge.config import Settings, build_settings
from listbridge.db import Database
from listbridge.models import APPROVED, Comment

from helpers import free_port

pytest.importorskip(
    "jetforce", reason="jetforce (the Gemini server these tests run) is not installed: pip install jetforce"
)

LIST = "bla@bla.example.org"
SLUG = "Comment-les-3hg-ont-réparé-le-CHATONS"  # non-ASCII: percent-encoded in every URL
TITLE = "Comment les 3hg ont réparé le CHATONS"
ASCII_SLUG = "autre-billet"
BODY = (
    "Bravo pour la réparation !\n\n=> gemini://evil.example/ un lien piégé\n# Un faux titre\n* pas une liste\n```\nfin"
)


def gemini_get(port: int, url: str, cafile: Path, timeout: float = 10.0) -> tuple[str, bytes]:
    """One Gemini request: (header line without CRLF, body bytes). The server's certificate is
    checked against the one the test made (CN/SAN localhost)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(url.encode("utf-8") + b"\r\n")
        chunks = []
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLEOFError:  # some servers close without close_notify
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    header, sep, body = response.partition(b"\r\n")
    assert sep, f"no CRLF-terminated header in {response[:200]!r}"
    return header.decode("utf-8"), body


@pytest.fixture(scope="module")
def tls_cert(certificate: tuple[Path, Path]) -> tuple[Path, Path]:
    return certificate


def _jetforce_command() -> list[str]:
    exe = shutil.which("jetforce")
    if exe:
        return [exe]
    return [sys.executable, "-m", "jetforce"]  # the console script is not on PATH


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jetforce exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"jetforce did not listen on 127.0.0.1:{port} within {timeout}s")


class GeminiServer:
    def __init__(self, port: int, cafile: Path) -> None:
        self.port = port
        self.cafile = cafile

    def url(self, relpath: str) -> str:
        """gemini://localhost:PORT/<relpath percent-encoded>"""
        return f"gemini://localhost:{self.port}/{quote(relpath)}"

    def get(self, url: str) -> tuple[str, bytes]:
        return gemini_get(self.port, url, self.cafile)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    repo = tmp_path / "site"
    (repo / "log").mkdir(parents=True)
    (repo / "log" / f"{SLUG}.gmi").write_text(f"# {TITLE}\n\nLe récit.\n")
    (repo / "log" / f"{ASCII_SLUG}.gmi").write_text("# Un autre billet\n")
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    return repo


@pytest.fixture
def gemini(site: Path, tls_cert: tuple[Path, Path], tmp_path: Path) -> Iterator[GeminiServer]:
    cert, key = tls_cert
    port = free_port()
    log = tmp_path / "jetforce.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *_jetforce_command(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(site),
                "--tls-certfile",
                str(cert),
                "--tls-keyfile",
                str(key),
                "--hostname",
                "localhost",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for_port(port, proc, log)
        yield GeminiServer(port, cert)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def settings(site: Path, tmp_path: Path) -> Settings:
    return build_settings(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'lb.sqlite3'}"},
            "site": {"repo": str(site), "base_url": "gemini://localhost"},
            "lists": [
                {
                    "address": LIST,
                    "title": "bla",
                    "owner": "owner@example.org",
                    "language": "fr",
                    "moderation": "all",
                    "authserv_id": "mx.bla.example.org",
                }
            ],
        }
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database.url)
    database.upgrade()
    yield database
    database.dispose()


def approve(db: Database, *, slug: str, title: str, name: str, text: str, when: dt.datetime) -> int:
    with db.transaction() as session:
        c = Comment(
            list_address=LIST,
            sender=f"{name.lower() or 'anon'}@example.net",
            display_name=name,
            subject=f"Re: {title}",
            message_id=f"<{time.time_ns()}@example.net>",
            received_at=when,
            status=APPROVED,
            post_slug=slug,
            post_title=title,
            post_path=f"log/{slug}.gmi",
            text=text,
            published=False,
            raw=b"From: x\r\n\r\nbody\r\n",
        )
        session.add(c)
        session.flush()
        return c.id


def publish_two_posts(db: Database, settings: Settings) -> None:
    approve(db, slug=SLUG, title=TITLE, name="Carole", text=BODY, when=dt.datetime(2024, 5, 1, 10, 0))
    approve(db, slug=ASCII_SLUG, title="Un autre billet", name="Zoé", text="Merci.", when=dt.datetime(2024, 5, 2, 9, 0))
    assert publish.publish_pending(db, settings), "publish_pending made no commit"


def header_ok(header: str) -> None:
    assert re.fullmatch(r"20 text/gemini(;.*)?", header), header
    params = dict(p.strip().partition("=")[::2] for p in header.split(";")[1:])
    assert params.get("charset", "utf-8").lower() in ("utf-8", "utf8"), header


def test_comment_page_served_over_gemini_is_the_published_file(db, settings, site, gemini):
    publish_two_posts(db, settings)
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    written = page.read_bytes()
    assert "## Carole, 2024-05-01" in written.decode("utf-8")

    url = f"gemini://localhost:{gemini.port}/log/commentaires/{quote(SLUG)}.gmi"
    assert "%C3%A9" in url  # the non-ASCII page name travels percent-encoded
    header, body = gemini.get(url)
    header_ok(header)
    assert body == written

    # What a Gemini reader sees there: no link or heading smuggled in by the commenter.
    lines = body.decode("utf-8").splitlines()
    assert [line for line in lines if line.startswith("=>")] == [
        "=> /log/Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS.gmi Retour au billet",
        "=> index.gmi Tous les commentaires",
        "=> mailto:bla@bla.example.org?subject=Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS "
        "Envoyer un commentaire par courriel",
    ]
    assert [line for line in lines if line.startswith("#")] == [f"# Commentaires : {TITLE}", "## Carole, 2024-05-01"]
    assert "\\=> gemini://evil.example/ un lien piégé" in lines and "\\# Un faux titre" in lines
    assert "\\* pas une liste" in lines and "\\```" in lines

    # The ASCII-named page too.
    header, body = gemini.get(gemini.url(f"log/commentaires/{ASCII_SLUG}.gmi"))
    header_ok(header)
    assert body == (site / "log" / "commentaires" / f"{ASCII_SLUG}.gmi").read_bytes()


def test_index_links_resolve_to_the_post_pages(db, settings, site, gemini):
    publish_two_posts(db, settings)
    index_url = gemini.url("log/commentaires/index.gmi")
    header, body = gemini.get(index_url)
    header_ok(header)
    assert body == (site / "log" / "commentaires" / "index.gmi").read_bytes()

    links = [line for line in body.decode("utf-8").splitlines() if line.startswith("=>")]
    assert links == [  # newest first
        f"=> {ASCII_SLUG}.gmi 2024-05-02 Un autre billet (1)",
        f"=> {quote(SLUG)}.gmi 2024-05-01 {TITLE} (1)",
    ]
    # Follow each link as a client would (relative to the index URL): it reaches the page.
    for line, slug in zip(links, (ASCII_SLUG, SLUG), strict=True):
        target = urljoin(index_url.replace("gemini://", "http://"), line.split()[1]).replace("http://", "gemini://")
        header, page = gemini.get(target)
        header_ok(header)
        assert page == (site / "log" / "commentaires" / f"{slug}.gmi").read_bytes()

    # The directory URL serves the index (jetforce's index-file), same bytes.
    header, body_dir = gemini.get(gemini.url("log/commentaires/"))
    header_ok(header)
    assert body_dir == body


def test_republish_after_a_new_comment_is_what_the_server_serves(db, settings, site, gemini):
    publish_two_posts(db, settings)
    url = gemini.url(f"log/commentaires/{SLUG}.gmi")
    _, before = gemini.get(url)
    approve(db, slug=SLUG, title=TITLE, name="Ann", text="Moi aussi.", when=dt.datetime(2024, 5, 3, 8, 0))
    assert publish.republish(db, settings, {LIST: {SLUG}}, "republish")
    header, after = gemini.get(url)
    header_ok(header)
    assert after != before and after == (site / "log" / "commentaires" / f"{SLUG}.gmi").read_bytes()
    text = after.decode("utf-8")
    assert text.index("## Carole, 2024-05-01") < text.index("## Ann, 2024-05-03")


def test_missing_page_is_not_found(gemini):
    header, body = gemini.get(gemini.url("log/commentaires/nope.gmi"))
    assert header.startswith("51"), header
    assert body == b""
