"""Slugs, subject keys and the site's posts: a comment's subject finds its post whatever the
mail client did to it."""

from __future__ import annotations

import re
import unicodedata
from email.header import Header
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listbridge.archive.posts import Post, find_post, scan_posts
from listbridge.archive.slugs import decode_subject, slugify, strip_prefixes, subject_key

TITLE = "Comment les 3hg ont réparé le CHATONS?"
KEY = "comment-les-3hg-ont-repare-le-chatons"

SLUG_RE = re.compile(r"^(?:[a-z0-9]+(?:-[a-z0-9]+)*)?$")


@pytest.mark.parametrize(
    "subject",
    [
        TITLE,
        "Comment-les-3hg-ont-réparé-le-CHATONS",
        "comment-les-3hg-ont-repare-le-chatons",
        "Re: [bla] TR: Comment les 3hg ont réparé le CHATONS ?",
        "RE: RE: Comment les 3hg ont réparé le CHATONS",
        "Re[2]: Comment les 3hg ont réparé le CHATONS",
        "Re : Fwd: Fw: AW:Réf. : [bla][autre liste] Comment les 3hg ont réparé le CHATONS",
        "  re:re:  COMMENT LES 3HG ONT RÉPARÉ LE CHATONS !!!",
        "Comment les 3hg ont re\u0301pare\u0301 le CHATONS",  # decomposed accents (NFD, macOS)
        "=?utf-8?q?Comment_les_3hg_ont_r=C3=A9par=C3=A9_le_CHATONS?=",
        "Re: =?ISO-8859-1?Q?Comment_les_3hg_ont_r=E9par=E9_le_CHATONS?=",
        Header("Re: Comment les 3hg ont réparé le CHATONS ?", "utf-8").encode(),
    ],
)
def test_the_subjects_of_the_issue_give_the_same_key(subject: str) -> None:
    assert subject_key(subject) == KEY


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("", ""),
        ("---", ""),
        ("Cœur d'Ætna, Straße", "coeur-d-aetna-strasse"),
        ("ﬁn № 2", "fin-no-2"),
        ("Łódź", "lodz"),
        ("Ελληνικά only", "only"),
        ("2026-03-12 Panne", "2026-03-12-panne"),
    ],
)
def test_slugify_examples(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_prefixes_only_at_the_start() -> None:
    assert strip_prefixes("Re: Why Re: matters") == "Why Re: matters"
    assert strip_prefixes("Tribune libre") == "Tribune libre"
    assert strip_prefixes("Are you sure") == "Are you sure"
    assert subject_key("Re:") == ""


def test_undecodable_encoded_words_are_kept() -> None:
    assert decode_subject("=?x-unknown?q?abc?=") == "=?x-unknown?q?abc?="
    assert decode_subject("plain = subject") == "plain = subject"
    # A CR/LF hidden in an encoded word does not survive into the key.
    assert subject_key("=?utf-8?q?a=0D=0Ab?=") == "a-b"


# --- properties --------------------------------------------------------------------------------


@given(st.text())
def test_slugify_is_idempotent_and_clean(text: str) -> None:
    slug = slugify(text)
    assert SLUG_RE.match(slug), slug
    assert slugify(slug) == slug


prefixes = st.lists(
    st.sampled_from(
        [
            "Re:",
            "RE:",
            "re :",
            "Re[2]:",
            "Re[12] :",
            "Fwd:",
            "FWD:",
            "Fw:",
            "TR:",
            "tr :",
            "AW:",
            "Réf:",
            "REF.:",
            "[bla]",
            "[Liste des 3hg]",
            "[]",
        ]
    ),
    max_size=5,
)
spaces = st.sampled_from(["", " ", "  ", "\t"])
# No ':' or '[' in a title, so a title can never look like a prefix itself.
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzàéèêëçôöœæ0123456789 ?!'-.,", min_size=1)


def _accents_off(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


@given(prefixes, st.lists(spaces, min_size=6, max_size=6), words, st.booleans(), st.booleans())
def test_prefixes_case_and_accents_do_not_change_the_key(
    added: list[str], gaps: list[str], title: str, upper: bool, strip_accents: bool
) -> None:
    base = subject_key(title)
    variant = title.upper() if upper else title
    variant = _accents_off(variant) if strip_accents else variant
    subject = "".join(p + gaps[i % len(gaps)] for i, p in enumerate(added)) + variant
    assert subject_key(subject) == base
    assert subject_key(slugify(title)) == base


@given(words)
def test_a_raw_encoded_word_gives_the_same_key(title: str) -> None:
    encoded = Header(title, "utf-8").encode()
    assert subject_key(encoded) == subject_key(title)


# --- posts: real files in a temporary site repo -------------------------------------------------
# (posts.py is tested here because its whole point is slug matching.)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    _write(
        tmp_path / "log/Comment-les-3hg-ont-réparé-le-CHATONS.gmi",
        "# Comment les 3hg ont réparé le CHATONS\n\nPublié le 2026-03-12.\n",
    )
    _write(tmp_path / "log/2026-01-05-bonne-annee.gmi", "Pas de titre ici, 2025-12-31 dans le texte.\n")
    _write(tmp_path / "log/2025/panne.md", "```\n# not the title\n```\n# La grande panne\n")
    _write(tmp_path / "log/sans-date.gmi", "## Only a level-2 heading\n")
    _write(tmp_path / "log/index.gmi", "# Index\n")
    _write(tmp_path / "log/commentaires/Comment-les-3hg-ont-réparé-le-CHATONS.gmi", "# Commentaires\n")
    _write(tmp_path / "log/.drafts/secret.gmi", "# Secret\n")
    _write(tmp_path / "log/notes.txt", "# Not a post\n")
    _write(tmp_path / "about.gmi", "# Outside the posts dir\n")
    (tmp_path / "log/broken.gmi").write_bytes(b"# Caf\xe9 2026-02-30 2026-02-28\n")
    return tmp_path


def test_scan_posts_reads_slug_title_path_and_date(site: Path) -> None:
    posts = scan_posts(site, "log", "log/commentaires")
    chatons = posts["comment-les-3hg-ont-repare-le-chatons"]
    assert chatons == Post(
        slug="Comment-les-3hg-ont-réparé-le-CHATONS",
        title="Comment les 3hg ont réparé le CHATONS",
        path="log/Comment-les-3hg-ont-réparé-le-CHATONS.gmi",
        date="2026-03-12",
    )
    annee = posts["2026-01-05-bonne-annee"]
    assert (annee.title, annee.date) == ("2026-01-05-bonne-annee", "2026-01-05")  # the name's date wins
    panne = posts["panne"]
    assert panne is posts["la-grande-panne"]
    assert (panne.title, panne.path, panne.date) == ("La grande panne", "log/2025/panne.md", None)
    assert posts["sans-date"].title == "sans-date"
    broken = posts["broken"]
    assert (broken.title, broken.date) == ("Caf\ufffd 2026-02-30 2026-02-28", "2026-02-28")  # invalid date skipped
    assert {p.path for p in posts.values()} == {
        "log/Comment-les-3hg-ont-réparé-le-CHATONS.gmi",
        "log/2026-01-05-bonne-annee.gmi",
        "log/2025/panne.md",
        "log/sans-date.gmi",
        "log/broken.gmi",
    }


def test_a_file_name_key_wins_over_another_posts_title(tmp_path: Path) -> None:
    _write(tmp_path / "log/a.gmi", "# Panne\n")
    _write(tmp_path / "log/panne.gmi", "# Autre chose\n")
    posts = scan_posts(tmp_path, "log", "log/commentaires")
    assert posts["panne"].path == "log/panne.gmi"
    assert posts["autre-chose"].path == "log/panne.gmi"
    assert posts["a"].path == "log/a.gmi"


def test_scan_posts_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert scan_posts(tmp_path, "log", "log/commentaires") == {}


@pytest.mark.parametrize(
    "subject",
    [
        "Comment-les-3hg-ont-réparé-le-CHATONS",
        "Comment les 3hg ont réparé le CHATONS?",
        "comment-les-3hg-ont-repare-le-chatons",
        "Re: [bla] TR: Comment les 3hg ont réparé le CHATONS ?",
        "=?utf-8?q?Re=3A_Comment_les_3hg_ont_r=C3=A9par=C3=A9_le_CHATONS?=",
    ],
)
def test_find_post_by_subject(site: Path, subject: str) -> None:
    post = find_post(scan_posts(site, "log", "log/commentaires"), subject)
    assert post is not None and post.slug == "Comment-les-3hg-ont-réparé-le-CHATONS"


@pytest.mark.parametrize("subject", ["", "Re:", "[bla]", "Secret", "Index", "Commentaires", "Outside the posts dir"])
def test_find_post_misses(site: Path, subject: str) -> None:
    assert find_post(scan_posts(site, "log", "log/commentaires"), subject) is None
