"""A Discourse forum as an outage channel (apprise has no Discourse plugin): the outage opens
a topic, each update and the resolution reply in it. Discourse's API: POST /posts.json with
the Api-Key and Api-Username headers, a JSON body of title, raw and category for a topic, of
topic_id and raw for a reply; the answer gives the topic's id."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

TIMEOUT = 20.0


class ForumError(Exception):
    """The forum refused the post or could not be reached; the text says why (no key)."""


def post(base_url: str, api_key: str, user: str, raw: str, title: str = "", category: int = 0, topic: str = "") -> str:
    """A new topic (`title` given) or a reply in `topic`; the topic's id."""
    body: dict[str, object] = {"raw": raw}
    if topic:
        body["topic_id"] = int(topic)
    else:
        body["title"] = title
        if category:
            body["category"] = category
    request = urllib.request.Request(
        base_url.rstrip("/") + "/posts.json",
        data=json.dumps(body).encode(),
        headers={"Api-Key": api_key, "Api-Username": user, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (an https URL of the config)
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise ForumError(f"the forum answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ForumError(f"the forum cannot be reached ({type(exc).__name__})") from None
    topic_id = answer.get("topic_id") if isinstance(answer, dict) else None
    if topic_id is None:
        raise ForumError("the forum's answer has no topic_id")
    return str(topic_id)
