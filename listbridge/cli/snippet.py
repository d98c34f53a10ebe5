"""`listbridge snippet POST`: the footer a post carries, in the list's language."""

import click

from listbridge.archive.posts import site_posts
from listbridge.archive.slugs import slugify
from listbridge.cli import App, cli, pass_app
from listbridge.config import SiteSettings
from listbridge.render import environment


@cli.command()
@click.argument("post", required=False, default="")
@click.option("--list", "list_address", metavar="ADDR", help="which list (needed when several are configured)")
@click.option("--format", "form", type=click.Choice(["gemtext", "html"]), default="gemtext", help="html for a web post")
@pass_app
def snippet(app: App, post: str, list_address: str | None, form: str) -> None:
    """Print the comment/subscribe links to paste at the end of POST (a slug or a title); for
    a status list, the links that offer its notices."""
    mlist = app.settings.list_for(app.list_address(list_address))
    assert mlist is not None
    suffix = "html" if form == "html" else "gmi"
    if mlist.status_only:  # its subscribe links, whatever the post
        template = environment(mlist.templates).get_template(f"archive/{mlist.language}/snippet_status.{suffix}")
        click.echo(template.render(list=mlist, separator=app.settings.smtp.separator), nl=False)
        return
    if not post:
        raise click.UsageError("give the POST (a slug or a title) whose footer to print.")
    found = site_posts(app.settings).get(slugify(post))
    slug = found.slug if found else post.strip().replace(" ", "-")
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/snippet.{suffix}")
    click.echo(
        template.render(
            list=mlist,
            slug=slug,
            separator=app.settings.smtp.separator,
            archive=_archive(app.settings.site, mlist.comments_dir, form),
        ),
        nl=False,
    )
    if found is None:
        click.echo(
            f"note: no post {post!r} found under {app.settings.site.posts}/; the subject may not match.", err=True
        )


def _archive(site: SiteSettings, folder: str, form: str) -> str:
    """The archive's link in a post's footer: the HTML index under web_url on a www site."""
    if form == "html" and site.html:
        return f"{site.web_url}/{folder}/index.html"
    return f"/{folder}/"
