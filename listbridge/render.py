"""jinja2 templates: the shipped ones, overridable per list from a folder of the site's own."""

from __future__ import annotations

from functools import lru_cache

import jinja2

from listbridge import gemtext
from listbridge.config import ListSettings
from listbridge.resources import shipped_path
from listbridge.sanitize import html_text


@lru_cache(maxsize=16)
def environment(override: str = "") -> jinja2.Environment:
    """Templates from `override` first, then the shipped ones (also reachable as "default:…")."""
    shipped = jinja2.FileSystemLoader(str(shipped_path("templates")))
    loaders: list[jinja2.BaseLoader] = []
    if override:
        loaders.append(jinja2.FileSystemLoader(override))
    loaders += [shipped, jinja2.PrefixLoader({"default": shipped}, delimiter=":")]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # XML and HTML are escaped by jinja; mail text needs nothing; gemtext is made safe by the
        # inline/block/link helpers, since gemtext has no escape character.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("xml", "html"), default_for_string=False, default=False
        ),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["html_text"] = html_text
    env.filters["inline"] = gemtext.inline
    env.filters["block"] = gemtext.block
    env.globals["link"] = gemtext.link
    return env


def render_mail(mlist: ListSettings, template_name: str, **context: object) -> tuple[str, str]:
    """Render mail template `template_name` in the list's language: (subject, body).

    A mail template starts with a `Subject:` line and a blank line, then the body.
    """
    template = environment(mlist.templates).get_template(f"mail/{mlist.language}/{template_name}.txt")
    text = template.render(list=mlist, **context)
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject:"):
        raise ValueError(f"template mail/{mlist.language}/{template_name}.txt must start with a Subject: line")
    return head.removeprefix("Subject:").strip(), body.strip() + "\n"


def render_page(templates: str, language: str, name: str, **context: object) -> str:
    """Render HTML page template `name` (web/LANG/NAME.html, escaped) in `language`."""
    return environment(templates).get_template(f"web/{language}/{name}.html").render(language=language, **context)
