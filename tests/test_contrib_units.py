"""The systemd units in contrib/: every Documentation= points at a file that contrib/README.md's
install steps put there (no man page is shipped), and systemd itself accepts the lines."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "contrib" / "systemd").glob("listbridge*.*"))


def documentation(unit: Path) -> list[str]:
    return [
        uri
        for line in unit.read_text().splitlines()
        if line.startswith("Documentation=")
        for uri in line.partition("=")[2].split()
    ]


def installed() -> dict[str, Path]:
    """Destination -> source of the `install … SRC DEST` lines of contrib/README.md."""
    found = {}
    for line in (ROOT / "contrib" / "README.md").read_text().splitlines():
        words = line.partition("#")[0].split()
        if words[:1] == ["install"] and len(words) >= 3 and not words[-1].endswith("/"):
            found[words[-1]] = ROOT / words[-2]
    return found


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_documentation_points_at_an_installed_file(unit: Path) -> None:
    uris = documentation(unit)
    assert uris, f"{unit.name} has no Documentation="
    steps = installed()
    for uri in uris:
        assert uri.startswith("file:/"), uri  # man:listbridge(1) named a page that does not exist
        path = uri.removeprefix("file:")
        assert path in steps, f"contrib/README.md does not install {path}"
        assert steps[path].is_file(), steps[path]


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in UNITS:
        shutil.copy(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Only the lines about these files' own syntax and documentation: the ExecStart binaries
    # and the listbridge user belong to the host it is installed on.
    complaints = [
        line
        for line in result.stderr.splitlines()
        if re.search(r"Documentation|Invalid URL|man |Unknown (key|section)|parse", line)
    ]
    assert complaints == []
