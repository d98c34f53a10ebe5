"""The wheel is complete: installed into a fresh venv, far from any checkout, it upgrades a
database and finds its templates (both are mapped into the package at build time)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "subscribers",
    "confirmations",
    "comments",
    "outbox_messages",
    "outbox_recipients",
    "auto_replies",
    "alembic_version",
}

RENDER = """
import listbridge, listbridge.render, listbridge.resources
from listbridge.config import build_settings
print(listbridge.__file__)
print(listbridge.resources.shipped_path("templates"))
print(listbridge.resources.shipped_path("migrations"))
s = build_settings({"lists": [{"address": "bla@bla.example.org", "title": "bla", "language": "fr"}]})
subject, body = listbridge.render.render_mail(s.lists[0], "help", subscribe_address="S", unsubscribe_address="U",
                                              help_address="H", owner_address="O")
print(subject)
"""


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(out: Path, env: dict[str, str]) -> Path:
    """The wheel, built offline with the hatchling already installed."""
    try:
        import build  # noqa: F401

        args = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)]
    except ImportError:
        args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    run(args, cwd=out, env=env)
    wheels = list(out.glob("listbridge-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_installs_and_runs_without_a_checkout(tmp_path: Path, db_url: str) -> None:
    # Slow-ish (~8 s: a build, a venv, an install) but kept in the default run.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LISTBRIDGE_CONFIG", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = build_wheel(dist, env)

    # A bare venv whose dependencies come from this environment (a .pth after its own
    # site-packages, so the wheel installed there wins), with no network.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    own = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env)
    here = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(own.stdout.strip()) / "_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", "-q", str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)

    # A directory with no checkout around: only the configuration file.
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "listbridge.toml").write_text(f'[database]\nurl = "{db_url}"\n', encoding="utf-8")
    listbridge = shutil.which("listbridge", path=env["PATH"])
    assert listbridge == str(venv / "bin" / "listbridge")

    out = run([str(python), "-c", RENDER], cwd=work, env=env).stdout.splitlines()
    package_file, templates, migrations, subject = out
    assert Path(package_file).is_relative_to(venv), f"the editable checkout shadows the wheel: {package_file}"
    assert Path(templates).is_relative_to(venv), templates
    assert Path(migrations).is_relative_to(venv), migrations
    assert subject == "Aide de la liste bla"

    assert "db" in run([listbridge, "--help"], cwd=work, env=env).stdout
    upgraded = run([listbridge, "db", "upgrade"], cwd=work, env=env)
    assert "Traceback" not in upgraded.stderr

    engine = create_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()
