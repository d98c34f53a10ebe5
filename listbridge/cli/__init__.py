"""`listbridge` command line: the root group loads the configuration once into ctx.obj."""

from __future__ import annotations

import logging
import sys
import warnings
from functools import cached_property
from typing import TextIO

import click
from sqlalchemy.exc import OperationalError

from listbridge.config import ConfigError, ConfigWarning, Settings, load_settings
from listbridge.db import BadURL, Database
from listbridge.inbound.parse import quiet_parsers


class App:
    """What every command needs, built on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    @cached_property
    def db(self) -> Database:
        try:
            return Database(self.settings.database.url)
        except BadURL as exc:
            raise ConfigError(f"[database] url {exc}.") from None

    def ready_db(self) -> Database:
        """The database, upgraded to the newest schema if it is behind."""
        if not self.db.is_current():
            self.db.upgrade()
        return self.db

    def list_address(self, given: str | None) -> str:
        """The list a command is about: --list, or the only configured one."""
        if given:
            mlist = self.settings.list_for(given)
            if mlist is None:
                raise click.UsageError(f"{given} is not a configured list.")
            return mlist.address
        if len(self.settings.lists) > 1:
            raise click.UsageError("several lists are configured: say which one with --list.")
        return self.settings.lists[0].address


pass_app = click.make_pass_decorator(App)


def refuse_undecodable(command: click.Command, ctx: click.Context) -> None:
    """Refuse a text argument that came from bytes that are not UTF-8 (Python hands them over
    as lone surrogates, which no database, mail or terminal can encode). Paths are exempt:
    a file name may be any bytes."""
    for param in command.params:
        if isinstance(param.type, (click.Path, click.File)):
            continue
        value = ctx.params.get(param.name or "")
        for text in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(text, str) and not _is_utf8(text):
                shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise click.ClickException(f"{param.get_error_hint(ctx)} is not UTF-8 text: '{shown}'.")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Command(click.Command):
    """A command whose text arguments are checked as they are parsed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        refuse_undecodable(self, ctx)
        return rest


class Group(click.Group):
    """A group whose own options, commands and subgroups are checked the same way."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        refuse_undecodable(self, ctx)
        return rest


@click.group(cls=Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="configuration file (else $LISTBRIDGE_CONFIG, else ./listbridge.toml)",
)
@click.option("-v", "--verbose", is_flag=True, help="log more detail")
@click.version_option(package_name="listbridge")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """listbridge: a mailing list and comment bridge for gemlogs and sites kept in git."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # aiosmtpd logs every SMTP command of every session, addresses included, at INFO
        # (and the listener's own start-up probe as a lost connection): -v shows them.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        quiet_parsers()
    ctx.obj = App(config_path)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if issubclass(category, ConfigWarning):
        click.echo(f"listbridge: warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main() -> None:
    """Console entry point: user errors are one sentence on stderr and a non-zero exit."""
    warnings.showwarning = _show_warning
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"listbridge: error: {exc}", err=True)
        sys.exit(1)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        click.echo(f"listbridge: error: the database cannot be used: {reason}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"listbridge: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}.", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


from listbridge.cli import (  # noqa: E402,F401  (registers commands)
    archive,
    db,
    deliver,
    forget,
    init,
    moderate,
    outage,
    queue,
    roster,
    serve,
    snippet,
    subscribers,
    watch,
)
