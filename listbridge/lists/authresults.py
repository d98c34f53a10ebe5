"""Authentication-Results (RFC 8601): did the MTA we trust see a DMARC or aligned DKIM pass?

Pure functions. Only headers whose authserv-id is the configured one count, and only the
topmost of them (the one our MTA added; it must strip forged copies, as RFC 8601 asks).
A From header alone is never proof of anything.

>>> passes(["mx.example.org; dkim=pass header.d=example.net; dmarc=pass header.from=example.net"],
...        "mx.example.org", "carole@example.net")
True
>>> passes(["evil.example; dmarc=pass header.from=example.net"], "mx.example.org", "carole@example.net")
False
"""

from __future__ import annotations

import re

_COMMENT = re.compile(r"\([^()]*\)")


def _results(header: str) -> tuple[str, list[dict[str, str]]]:
    """(authserv-id, [{"method": …, "result": …, "header.d": …, …}, …])."""
    text = _COMMENT.sub(" ", _COMMENT.sub(" ", header))
    parts = [p.strip() for p in text.split(";")]
    authserv = parts[0].split()[0].lower() if parts and parts[0].split() else ""
    results = []
    for part in parts[1:]:
        tokens = part.split()
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        entry = {"method": method.lower().split("/")[0], "result": result.lower().strip('"')}
        for token in tokens[1:]:
            key, eq, value = token.partition("=")
            if eq:
                entry[key.lower()] = value.strip('"').lower()
        results.append(entry)
    return authserv, results


def _aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment: the same domain, or one a parent of the other."""
    domain = domain.lstrip("@").rstrip(".")
    return bool(domain) and (
        domain == from_domain or from_domain.endswith("." + domain) or domain.endswith("." + from_domain)
    )


def passes(headers: list[str] | tuple[str, ...], authserv_id: str, sender: str) -> bool:
    """True when our MTA recorded dmarc=pass for the From domain, or a dkim=pass aligned with it."""
    if not authserv_id or "@" not in sender:
        return False
    from_domain = sender.rpartition("@")[2].lower()
    for header in headers:
        authserv, results = _results(header)
        if authserv != authserv_id.lower():
            continue
        for r in results:
            if r["result"] != "pass":
                continue
            if r["method"] == "dmarc" and _aligned(r.get("header.from", ""), from_domain):
                return True
            if r["method"] == "dkim" and _aligned(
                r.get("header.d", r.get("header.i", "").rpartition("@")[2]), from_domain
            ):
                return True
        return False  # only the topmost trusted header counts
    return False
