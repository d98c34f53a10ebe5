"""config: embedded defaults, TOML overlay, warnings, one-sentence errors, lookup order, docs."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import warnings
from pathlib import Path

import pytest

from listbridge.config import (
    CONFIG_ENV,
    OPTIONS,
    ConfigError,
    ConfigWarning,
    Settings,
    build_settings,
    load_settings,
    render_default_config,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def build_quietly(data: dict) -> tuple[Settings, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build_settings(data)
    return result, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_defaults():
    settings = build_settings({})
    assert [m.address for m in settings.lists] == ["bla@localhost"]
    assert settings.database.url == "sqlite:///listbridge.sqlite3"  # relative: the working directory
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.lmtp) == ("127.0.0.1", 8025, False)
    assert settings.smtp.separator == "+"
    assert settings.site.repo == "site"
    assert (settings.relay.host, settings.relay.port, settings.relay.security) == ("127.0.0.1", 25, "none")
    assert settings.source is None


def test_every_default_comes_from_the_table():
    settings = build_settings({})
    for section, options in OPTIONS.items():
        values = settings.lists[0] if section == "lists" else getattr(settings, section)
        for option in options:
            expected = option.default
            if (section, option.key) == ("lists", "comments_dir"):
                expected = settings.site.comments_dir  # empty: the site's folder
            assert getattr(values, option.key) == expected, f"[{section}] {option.key}"


def test_toml_overlay_keeps_the_other_defaults(tmp_path):
    path = write(
        tmp_path / "lb.toml",
        '[smtp]\nport = 2525\nseparator = "-"\n[relay]\ntimeout = 5\n'
        '[[lists]]\naddress = "Bla@Bla.Example.ORG"\nlanguage = "fr"\n'
        '[[lists]]\naddress = "autre@bla.example.org"\nmoderation = "none"\ncomments_dir = "log/autre/"\n',
    )
    settings = load_settings(path)
    assert settings.source == path
    assert settings.smtp.port == 2525 and settings.smtp.host == "127.0.0.1" and settings.smtp.separator == "-"
    assert settings.relay.timeout == 5.0 and isinstance(settings.relay.timeout, float)
    assert [m.address for m in settings.lists] == ["bla@bla.example.org", "autre@bla.example.org"]
    assert settings.lists[0].language == "fr" and settings.lists[0].moderation == "first-post"
    assert settings.lists[1].moderation == "none" and settings.lists[1].language == "en"
    assert [m.comments_dir for m in settings.lists] == ["log/commentaires", "log/autre"]
    assert settings.list_for("BLA@bla.example.org") is settings.lists[0]
    assert settings.list_for("nobody@bla.example.org") is None
    assert settings.database == build_settings({}).database


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"smtp": {"prot": 25}}, ["no such option: [smtp] prot"]),
        ({"lists": [{"adress": "x@y.org"}]}, ["no such option: [lists] adress"]),
        ({"smpt": {"port": 25, "host": "x"}}, ["no such option: [smpt] port", "no such option: [smpt] host"]),
        ({"smtp": {"port": 25}}, []),
    ],
)
def test_unknown_keys_and_sections_warn(data, expected):
    settings, messages = build_quietly(data)
    assert sorted(messages) == sorted(expected)
    assert settings.smtp.port in (25, 8025)


def test_unknown_key_warning_through_load_settings(tmp_path):
    path = write(tmp_path / "lb.toml", "[watch]\nintervall = 5\n")
    with pytest.warns(ConfigWarning, match=re.escape("no such option: [watch] intervall")):
        settings = load_settings(path)
    assert settings.watch.interval == 60


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"smtp": {"port": "25"}}, "[smtp] port must be a whole number"),
        ({"smtp": {"port": 25.0}}, "[smtp] port must be a whole number"),
        ({"smtp": {"lmtp": 1}}, "[smtp] lmtp must be true or false"),
        ({"relay": {"connections": True}}, "[relay] connections must be a whole number"),
        ({"relay": {"timeout": "30"}}, "[relay] timeout must be a number"),
        ({"relay": {"timeout": float("nan")}}, "[relay] timeout must be a finite number"),
        ({"database": {"url": 5}}, "[database] url must be a string"),
        ({"relay": {"security": "tls"}}, "[relay] security must be one of none, starttls, ssl"),
        ({"lists": [{"moderation": "some"}]}, "[lists 1] moderation must be one of all, first-post, none"),
        ({"lists": [{}, {"language": "de"}]}, "[lists 2] language must be one of fr, en"),
        ({"smtp": {"port": 0}}, "[smtp] port must be at least 1"),
        ({"relay": {"port": 70000}}, "[relay] port must be at most 65535"),
        ({"relay": {"connections": 0}}, "[relay] connections must be at least 1"),
        ({"smtp": {"max_message_size": -1}}, "[smtp] max_message_size must be at least 1"),
        ({"subscriptions": {"confirm_days": 0}}, "[subscriptions] confirm_days must be at least"),
        ({"subscriptions": {"confirm_limit": 0}}, "[subscriptions] confirm_limit must be at least 1"),
        ({"watch": {"failures": 0}}, "[watch] failures must be at least 1"),
        ({"watch": {"mx": "mx.example.org"}}, "[watch] mx must be HOST:PORT"),
        ({"database": {"url": " "}}, "[database] url must not be empty"),
        ({"lists": [{"address": "bla"}]}, "[[lists]] entry 1 has an invalid address 'bla'"),
        ({"lists": [{"address": "bla@"}]}, "invalid address"),
        ({"lists": [{"address": "@example.org"}]}, "invalid address"),
        ({"lists": [{"address": "bla@x@example.org"}]}, "invalid address"),
        ({"lists": [{"address": "b la@example.org"}]}, "invalid address"),
        ({"lists": [{"address": "<bla@example.org>"}]}, "invalid address"),
        ({"lists": [{}, {"address": "bla@example.org"}, {"address": "bla@example.org,x@y"}]}, "[[lists]] entry 3"),
        ({"lists": [{"owner": "the owner"}]}, "invalid owner address 'the owner'"),
        ({"lists": [{"moderators": ["ann@example.org", "not one"]}]}, "invalid moderator address 'not one'"),
        ({"lists": [{"address": "bla@example.org"}, {"address": "BLA@Example.org"}]}, "the same address"),
        ({"lists": []}, "[[lists]] must hold at least one list"),
        ({"lists": {"address": "bla@example.org"}}, "[[lists]] must hold at least one list"),
        ({"lists": ["bla@example.org"]}, "each [[lists]] entry must be a table"),
        ({"smtp": [{"port": 25}]}, "[smtp] must be a table"),
        ({"smtp": {"separator": ""}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "++"}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "a"}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "@"}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "."}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": ","}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "<"}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": '"'}}, "[smtp] separator must be one punctuation character"),
        ({"smtp": {"separator": "-"}, "lists": [{"address": "my-list@example.org"}]}, "contains the separator '-'"),
        (
            {"lists": [{"address": "a@x.org"}, {"address": "b@x.org"}]},
            "lists a@x.org and b@x.org would both write their comments to log/commentaires/: give each its own",
        ),
        (
            {"lists": [{"address": "a@x.org", "comments_dir": "c"}, {"address": "b@x.org", "comments_dir": "/c/./"}]},
            "lists a@x.org and b@x.org would both write their comments to c/",
        ),
        (
            {"lists": [{"address": "a@x.org", "comments_dir": "../c"}]},
            "[[lists]] comments_dir of list a@x.org must be a folder inside the site repo "
            "other than [site] posts, not '../c'.",
        ),
        (
            {"site": {"comments_dir": "/"}},
            "[site] comments_dir of list bla@localhost must be a folder inside the site repo",
        ),
        ({"lists": [{"comments_dir": "log/"}]}, "[[lists]] comments_dir of list bla@localhost must be a folder inside"),
        ({"lists": [{"comments_dir": 3}]}, "[lists 1] comments_dir must be a string"),
    ],
)
def test_invalid_values_raise_one_sentence(data, fragment):
    with pytest.raises(ConfigError) as info:
        build_quietly(data)
    message = str(info.value)
    assert fragment in message
    assert message.endswith(".") and "\n" not in message and message.count(". ") == 0


@pytest.mark.parametrize("separator", ["+", "-", "=", "_", "~"])
def test_separators_allowed_in_a_local_part(separator):
    assert build_settings({"smtp": {"separator": separator}}).smtp.separator == separator


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[smtp\nport = 1\n", "is not valid TOML"),
        ("port = = 1\n", "is not valid TOML"),
    ],
)
def test_broken_files(tmp_path, text, fragment):
    path = write(tmp_path / "lb.toml", text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings(path)


def test_missing_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path)  # a directory
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[[lists]]\ntitle = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(latin1)


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_settings().smtp.port == 8025 and load_settings().source is None  # no file: defaults

    local = write(tmp_path / "listbridge.toml", "[smtp]\nport = 1001\n")
    assert load_settings().smtp.port == 1001
    assert load_settings().source == Path("listbridge.toml")

    env = write(tmp_path / "env.toml", "[smtp]\nport = 1002\n")
    monkeypatch.setenv(CONFIG_ENV, str(env))
    assert load_settings().smtp.port == 1002

    explicit = write(tmp_path / "explicit.toml", "[smtp]\nport = 1003\n")
    assert load_settings(explicit).smtp.port == 1003
    assert load_settings(str(explicit)).smtp.port == 1003

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))  # named but absent: an error
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()
    monkeypatch.setenv(CONFIG_ENV, "")  # empty: as if unset
    assert load_settings().smtp.port == 1001
    local.unlink()
    assert load_settings().smtp.port == 8025


def test_rendered_default_config_parses_back_into_the_defaults():
    text = render_default_config()
    data = tomllib.loads(text)

    def toml(value):  # TOML has arrays where the defaults hold tuples
        return list(value) if isinstance(value, tuple) else value

    expected = {
        section: [{o.key: toml(o.default) for o in options}]
        if section == "lists"
        else {o.key: toml(o.default) for o in options}
        for section, options in OPTIONS.items()
    }
    assert data == expected
    settings, messages = build_quietly(data)
    assert settings == build_settings({}) and messages == []
    for options in OPTIONS.values():
        for option in options:
            assert f"# {option.help}" in text  # commented


def readme_options() -> dict:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no ```toml block"
    return tomllib.loads(blocks[0])


@pytest.mark.parametrize("section", sorted(OPTIONS))
def test_every_option_is_documented_in_the_readme(section):
    documented = readme_options().get(section)
    assert documented is not None, f"[{section}] is missing from README.md"
    if section == "lists":
        documented = documented[0]
    keys = {o.key for o in OPTIONS[section]}
    assert sorted(keys - set(documented)) == [], f"undocumented options in [{section}]"
    assert sorted(set(documented) - keys) == [], f"README.md documents options [{section}] does not have"


def test_readme_example_is_a_valid_configuration():
    settings, messages = build_quietly(readme_options())
    assert messages == []
    assert settings.lists[0].address == "bla@bla.example.org"


def test_comment_folders_are_normalised_and_default_to_the_sites():
    settings = build_settings(
        {
            "site": {"comments_dir": "/gemlog/comments/"},
            "lists": [{"address": "a@x.org"}, {"address": "b@x.org", "comments_dir": "./b//c/"}],
        }
    )
    assert [m.comments_dir for m in settings.lists] == ["gemlog/comments", "b/c"]
    assert settings.comments_dirs == ("gemlog/comments", "b/c")


def test_relay_password_file(tmp_path):
    secret = write(tmp_path / "secret", "s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(
        ConfigError, match=r"^\[relay\] password_file .* can be read by others \(mode 644\): chmod 600 it\.$"
    ):
        build_settings({"relay": {"password_file": str(secret)}}).relay.password()
    secret.chmod(0o600)
    assert build_settings({"relay": {"password_file": str(secret)}}).relay.password() == "s3cret"
    assert build_settings({}).relay.password() == ""
    with pytest.raises(ConfigError, match=r"\[relay\] password_file .*none cannot be read"):
        build_settings({"relay": {"password_file": str(tmp_path / "none")}}).relay.password()


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run(["listbridge", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[relay]\nsecurity = "tls"\n',
            "listbridge: error: [relay] security must be one of none, starttls, ssl, not 'tls'.",
        ),
        ("[smtp\n", "listbridge: error: configuration file bad.toml is not valid TOML"),
        ('[[lists]]\naddress = "nope"\n', "listbridge: error: [[lists]] entry 1 has an invalid address 'nope'."),
        (
            '[[lists]]\naddress = "a@x.org"\n[[lists]]\naddress = "b@x.org"\n',
            "listbridge: error: lists a@x.org and b@x.org would both write their comments to log/commentaires/: "
            "give each its own [[lists]] comments_dir.",
        ),
    ],
)
def test_cli_reports_a_bad_config_in_one_line(tmp_path, text, message):
    write(tmp_path / "bad.toml", text)
    result = run_cli(tmp_path, "--config", "bad.toml", "subscribers", "list")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "listbridge.sqlite3").exists()  # stopped before touching anything


def test_cli_missing_config_file(tmp_path):
    result = run_cli(tmp_path, "--config", "nope.toml", "subscribers", "list")
    assert result.returncode == 1
    assert result.stderr.strip() == "listbridge: error: configuration file nope.toml does not exist."


def test_cli_warns_about_unknown_keys_and_goes_on(tmp_path):
    write(tmp_path / "listbridge.toml", f'[database]\nurl = "sqlite:///{tmp_path}/lb.sqlite3"\ncolour = "red"\n')
    result = run_cli(tmp_path, "subscribers", "list")
    assert result.returncode == 0, result.stderr
    assert "listbridge: warning: no such option: [database] colour" in result.stderr
    assert "Traceback" not in result.stderr
