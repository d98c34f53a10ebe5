"""`listbridge init`: a commented configuration file, the database and the site repo."""

from pathlib import Path

import click

from listbridge.cli import App, cli, pass_app
from listbridge.config import render_default_config


@cli.command()
@click.option("--force", is_flag=True, help="overwrite an existing file")
@click.argument("path", default="listbridge.toml")
@pass_app
def init(app: App, path: str, force: bool) -> None:
    """Write a commented configuration file with every option at its default."""
    target = Path(path)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists already; use --force to overwrite it.")
    target.write_text(render_default_config(), encoding="utf-8")
    click.echo(f"wrote {target}")
