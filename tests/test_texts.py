"""Mail texts: both languages complete, chosen per list, overridable by a site's own folder."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from listbridge.config import build_settings
from listbridge.render import render_mail
from listbridge.resources import shipped_path

CONTEXT = dict(
    name="Zoé",
    address="zoe@example.org",
    confirm_address="bla+confirm-x@d",
    days=7,
    subscribe_address="bla+subscribe@d",
    unsubscribe_address="bla+unsubscribe@d",
    help_address="bla+help@d",
    owner_address="bla+owner@d",
    post_title="Comment les 3hg ont réparé le CHATONS",
    text="Bravo !",
    author="Carole",
    attachments=2,
    page_url="gemini://d/log/commentaires/x.gmi",
    subject="Re: x",
    reason="hors sujet",
    nature="power cut",
    status="identified",
    eta="tonight",
    message="ISP on site",
    opened_at=dt.datetime(2026, 11, 26, 9, 0),
    automatic=True,
    status_url="gemini://d/status.gmi",
)


def names(language: str) -> set[str]:
    return {p.stem for p in (shipped_path("templates") / "mail" / language).glob("*.txt")}


def test_both_languages_have_the_same_texts():
    assert names("en") == names("fr")
    assert {"confirm_subscribe", "confirm_unsubscribe", "welcome", "goodbye", "help"} <= names("en")


@pytest.mark.parametrize("language", ["en", "fr"])
def test_every_text_renders(language):
    """Every text compiles and fills in with a full context. Whether each caller passes what its
    text needs is tested through that caller (test_subscription_flow, test_outage, …): a full
    context here would hide a missing name."""
    mlist = build_settings({"lists": [{"address": "bla@d", "language": language}]}).lists[0]
    for name in names(language):
        subject, body = render_mail(mlist, name, **CONTEXT)
        assert subject and "\n" not in subject
        assert body.strip() and "{{" not in body


def test_language_is_chosen_per_list():
    fr = build_settings({"lists": [{"address": "bla@d", "language": "fr"}]}).lists[0]
    en = build_settings({"lists": [{"address": "bla@d", "language": "en"}]}).lists[0]
    assert render_mail(fr, "goodbye", **CONTEXT)[0].startswith("Vous avez quitté")
    assert render_mail(en, "goodbye", **CONTEXT)[0].startswith("You left")


def test_a_site_folder_overrides_and_extends_shipped_texts(tmp_path: Path):
    folder = tmp_path / "mytemplates" / "mail" / "fr"
    folder.mkdir(parents=True)
    (folder / "welcome.txt").write_text("Subject: Salut {{ name }}\n\nBienvenue chez nous, {{ address }}.\n")
    (folder / "help.txt").write_text('{% extends "default:mail/fr/help.txt" %}\n')
    mlist = build_settings(
        {"lists": [{"address": "bla@d", "language": "fr", "templates": str(tmp_path / "mytemplates")}]}
    ).lists[0]
    assert render_mail(mlist, "welcome", **CONTEXT) == ("Salut Zoé", "Bienvenue chez nous, zoe@example.org.\n")
    assert render_mail(mlist, "help", **CONTEXT)[0] == "Aide de la liste bla"
    assert render_mail(mlist, "goodbye", **CONTEXT)[0].startswith("Vous avez quitté")  # not overridden
