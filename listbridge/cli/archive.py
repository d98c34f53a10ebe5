"""`listbridge archive rebuild|push`."""

import click

from listbridge.archive import publish
from listbridge.cli import App, cli, pass_app
from listbridge.cli.output import progress
from listbridge.failurelog import summary


@cli.group()
def archive() -> None:
    """The comment archive in the site repo."""


@archive.command()
@pass_app
def rebuild(app: App) -> None:
    """Render every page from the database; commit only if something differs."""
    db = app.ready_db()
    with db.transaction() as session:
        total = publish.page_count(session, app.settings)
    try:
        with progress("rendering posts", total) as tick:
            commits = publish.rebuild(db, app.settings, progress=tick)
    except publish.SITE_ERRORS as exc:
        raise click.ClickException(f"the site repo could not be updated: {summary(exc)}") from exc
    for sha in commits:
        click.echo(f"site commit {sha[:10]}")
    if not commits:
        click.echo("archive unchanged: nothing to commit")


@archive.command()
@pass_app
def push(app: App) -> None:
    """Push the site repo's commits that have not reached the remote yet."""
    repo = publish.repo_for(app.settings, app.settings.lists[0])
    if not repo.has_remote():
        raise click.ClickException(f"the site repo {repo.path} has no remote to push to (git remote add origin URL).")
    waiting = repo.unpushed()
    with repo.lock():
        if not repo.push():
            raise click.ClickException(f"push failed; {waiting} commit(s) stay local and will be retried.")
    click.echo(f"pushed {waiting} commit(s)")
