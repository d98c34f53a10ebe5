"""Two lists on one site repo, each with its own comments_dir: real SMTP in, the real CLI
(moderate approve, archive rebuild, snippet), a real git repo. Neither list's index, feed or
pages may overwrite or delete the other's."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from listbridge.archive.posts import site_posts
from listbridge.cli import cli
from listbridge.config import load_settings
from listbridge.db import Database
from listbridge.models import Comment
from listbridge.service import Service

from helpers import free_port, git, send, site_repo, wait_for

ONE, TWO = "bla@bla.example.org", "autre@bla.example.org"
DIR_ONE, DIR_TWO = "log/commentaires", "log/autre"  # the second inside the posts folder, on purpose


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return site_repo(tmp_path / "site", {"log/premier.gmi": "# Premier billet\n", "log/second.gmi": "# Second post\n"})


@pytest.fixture
def config(tmp_path: Path, site: Path, db_url: str, sink) -> Path:
    path = tmp_path / "listbridge.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n'
        f"[smtp]\nport = {free_port()}\n"
        f"[relay]\nport = {sink.port}\n"
        f'[site]\nrepo = "{site}"\nbase_url = "gemini://bla.example.org"\n'
        f'[[lists]]\naddress = "{ONE}"\ntitle = "bla"\nlanguage = "fr"\nmoderation = "all"\n'
        f'[[lists]]\naddress = "{TWO}"\ntitle = "autre"\nlanguage = "en"\nmoderation = "all"\n'
        f'comments_dir = "{DIR_TWO}/"\n',
        encoding="utf-8",
    )
    return path


def cli_run(config: Path, *args: str):
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def receive(config: Path, mails: list[tuple[str, str, str]]) -> list[int]:
    """Send (list, subject, body) mails through a real serve; the ids of the held comments."""
    settings = load_settings(config)
    svc = Service(settings)
    svc.start()
    try:
        for address, subject, body in mails:
            send(settings.smtp.port, address, subject=subject, body=body)
        db = Database(settings.database.url)
        wait_for(lambda: len(ids(db)) >= len(mails))
        found = ids(db)
        db.dispose()
    finally:
        svc.stop()
    return found


def ids(db: Database) -> list[int]:
    with db.transaction() as session:
        return list(session.scalars(select(Comment.id).order_by(Comment.id)))


def files(site: Path, folder: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((site / folder).iterdir())}


def test_two_lists_keep_their_index_feed_and_pages(config, site):
    first, second = receive(config, [(ONE, "Premier billet", "Un avis.\n"), (TWO, "Second post", "A view.\n")])
    held = cli_run(config, "moderate", "list").splitlines()  # which list each waits on
    assert held[0].split()[:3] == ["ID", "LIST", "POST"] and ONE in held[1] and TWO in held[2], held
    assert f"List:     {TWO}" in cli_run(config, "moderate", "show", str(second))
    cli_run(config, "moderate", "approve", str(first), str(second))
    one, two = files(site, DIR_ONE), files(site, DIR_TWO)
    assert sorted(one) == ["atom.xml", "index.gmi", "premier.gmi"]
    assert sorted(two) == ["atom.xml", "index.gmi", "second.gmi"]
    assert "premier.gmi" in one["index.gmi"] and "second" not in one["index.gmi"]
    assert "second.gmi" in two["index.gmi"] and "premier" not in two["index.gmi"]
    assert "Un avis." in one["atom.xml"] and "A view." not in one["atom.xml"]
    assert "A view." in two["atom.xml"] and f"gemini://bla.example.org/{DIR_TWO}/second.gmi" in two["atom.xml"]
    assert git(site, "status", "--porcelain") == ""

    # The post scan skips both comment folders: log/autre/second.gmi is a page, not a post.
    posts = site_posts(load_settings(config))
    assert posts["second"].path == "log/second.gmi"
    assert not [p for p in posts.values() if p.path.startswith((DIR_ONE + "/", DIR_TWO + "/"))]

    head = git(site, "rev-parse", "HEAD")
    assert "archive unchanged" in cli_run(config, "archive", "rebuild")
    assert git(site, "rev-parse", "HEAD") == head
    assert files(site, DIR_ONE) == one and files(site, DIR_TWO) == two

    # A rebuild repairs each list in its own folder, and deletes only that list's stale pages.
    (site / DIR_TWO / "second.gmi").unlink()
    (site / DIR_ONE / "stale.gmi").write_text("old\n")
    (site / DIR_TWO / "notes.txt").write_text("the maintainer's\n")
    out = cli_run(config, "archive", "rebuild")
    assert "site commit" not in out  # the work tree is back to HEAD, nothing to commit
    assert files(site, DIR_ONE) == one
    assert files(site, DIR_TWO) == {**two, "notes.txt": "the maintainer's\n"}

    # A new approval on list one leaves list two's files alone.
    (third,) = receive(config, [(ONE, "Premier billet", "Encore un avis.\n")])[2:]
    cli_run(config, "moderate", "approve", str(third))
    assert "Encore un avis." in (site / DIR_ONE / "premier.gmi").read_text()
    assert files(site, DIR_TWO) == {**two, "notes.txt": "the maintainer's\n"}
    assert "Encore un avis." not in git(site, "show", f"HEAD:{DIR_TWO}/atom.xml")

    # The same post commented on both lists is a page on each: the progress counts both.
    (fourth,) = receive(config, [(TWO, "Premier billet", "Same post, other list.\n")])[3:]
    cli_run(config, "moderate", "approve", str(fourth))
    assert "rendering posts: 3/3 done" in cli_run(config, "archive", "rebuild")


def test_snippet_points_at_each_lists_folder(config):
    assert f"=> /{DIR_ONE}/ " in cli_run(config, "snippet", "--list", ONE, "premier")
    assert f"=> /{DIR_TWO}/ " in cli_run(config, "snippet", "--list", TWO, "second")
