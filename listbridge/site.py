"""The site repository (git work tree): created on first use. Comment pages come with issue 3."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ensure_repo(path: str | Path) -> Path:
    """Create the site's git work tree if it does not exist yet; return its path."""
    repo = Path(path)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    return repo
