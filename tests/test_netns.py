"""The outage drill across a real network link: the home MX runs in its own Linux network
namespace, joined to the watcher's (default) namespace by a veth pair; the test cuts that link
with `ip link set ... down` and brings it back.

Isolation: the veth ends get a /30 from 10.231.0.0/16, used only here. Neither namespace gets
a route other than that /30 (no default route in the home namespace, nothing is forwarded,
ip_forward is not touched), and an `unreachable` route for the same /30 (higher metric) in the
default namespace makes sure that while the link is cut the probes are refused locally instead
of following the machine's default route out. Everything (server process, veth, guard route,
namespace) is removed in the fixture's teardown, also when the test fails.

Needs root and iproute2 on Linux; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from listbridge.db import Database
from listbridge.models import ProbeStatus, Subscriber
from listbridge.outage.probe import probe
from listbridge.outage.watch import Watcher

from helpers import READERS, db_count, export_roster, git, wait_for, watcher_config

OWNER = "owner@example.org"
TEST_RANGE = ipaddress.IPv4Network("10.231.0.0/16")  # test-only, never routed off this machine
GUARD_METRIC = 4242
SMTP_PORT = 25  # the home namespace has its own port space


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=15)


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /30 of the test range that no address or route in this namespace uses yet; starts at
    a pid-derived block so parallel runs pick different ones."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        fields = [f for f in line.split() if f not in ("unreachable", "blackhole", "prohibit", "local", "broadcast")]
        if fields and fields[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(fields[0], strict=False))
    blocks = list(TEST_RANGE.subnets(new_prefix=30))
    start = os.getpid() % len(blocks)
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if not any(block.overlaps(net) for net in used if net.prefixlen > 0):
            return block
    pytest.skip(f"no free /30 left in {TEST_RANGE}")


class HomeLink:
    """The home namespace, its veth pair and the SMTP server inside it."""

    def __init__(self) -> None:
        tag = f"{os.getpid():x}{secrets.token_hex(2)}"  # <= 11 characters: interface names max 15
        self.ns = f"lbtest-{tag}"
        self.host_if = f"lbw{tag}"  # in the default namespace (the watcher's side)
        self.home_if = f"lbh{tag}"  # in the home namespace
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_ip = self.home_ip = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (the watcher's output until teardown)
        self.created_ns = self.created_veth = self.created_guard = False

    @property
    def mx(self) -> str:
        return f"{self.home_ip}:{SMTP_PORT}"

    def setup(self) -> None:
        result = ip("netns", "add", self.ns, check=False)
        if result.returncode != 0:
            pytest.skip(f"network namespaces not available: `ip netns add` failed: {result.stderr.strip()}")
        self.created_ns = True
        result = ip(
            "link", "add", self.host_if, "type", "veth", "peer", "name", self.home_if, "netns", self.ns, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"veth pairs not available: `ip link add ... type veth` failed: {result.stderr.strip()}")
        self.created_veth = True
        self.subnet = _pick_subnet()
        host, home = list(self.subnet.hosts())
        self.host_ip, self.home_ip = str(host), str(home)
        # The guard first: from now on, nothing for this /30 can ever take the default route.
        ip("route", "add", "unreachable", str(self.subnet), "metric", str(GUARD_METRIC))
        self.created_guard = True
        ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("-n", self.ns, "addr", "add", f"{self.home_ip}/30", "dev", self.home_if)
        ip("-n", self.ns, "link", "set", self.home_if, "up")
        # Isolation checks: the home namespace knows only its /30; the host reaches it on the veth.
        assert ip("-n", self.ns, "-4", "route", "show", "default").stdout.strip() == ""
        assert ip("-n", self.ns, "-6", "route", "show", "default").stdout.strip() == ""
        assert f"dev {self.host_if}" in ip("route", "get", self.home_ip).stdout
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                self.mx,
                "-c",
                "aiosmtpd.handlers.Sink",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not probe(self.mx, timeout=0.5).ok:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                pytest.fail(
                    f"the home MX did not come up in {self.ns} (exit {self.proc.poll()}):\n"
                    + self.log.read().decode(errors="replace")
                )
            time.sleep(0.1)

    def set_link(self, side: str, state: str) -> None:
        if side == "home":
            ip("-n", self.ns, "link", "set", self.home_if, state)
        else:
            ip("link", "set", self.host_if, state)

    def route_to_home(self) -> str:
        """Where the default namespace would send a packet to the home MX right now."""
        result = ip("route", "get", self.home_ip, check=False)
        return (result.stdout + result.stderr).strip()

    def teardown(self) -> None:
        """Undo everything setup did, as far as it got; report what could not be undone."""
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.created_ns:
            # Anything still running in our own namespace was started by this test.
            for pid in ip("netns", "pids", self.ns, check=False).stdout.split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), 9)
        if self.created_veth:
            ip("link", "del", self.host_if, check=False)  # removes both ends
        if self.created_guard:
            ip("route", "del", "unreachable", str(self.subnet), "metric", str(GUARD_METRIC), check=False)
        if self.created_ns:
            result = ip("netns", "del", self.ns, check=False)
            if result.returncode != 0:
                problems.append(f"ip netns del {self.ns}: {result.stderr.strip()}")
        self.log.close()
        if self.created_ns and self.ns in ip("netns", "list", check=False).stdout.split():
            problems.append(f"namespace {self.ns} still exists")
        if self.created_veth and ip("link", "show", self.host_if, check=False).returncode == 0:
            problems.append(f"interface {self.host_if} still exists")
        if self.created_guard and ip("route", "show", str(self.subnet), check=False).stdout.strip():
            problems.append(f"route {self.subnet} still exists")
        if problems:
            raise RuntimeError("netns cleanup incomplete: " + "; ".join(problems))


@pytest.fixture
def home_link():
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (run as root to include this drill)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    link = HomeLink()
    try:
        link.setup()
        yield link
    finally:
        link.teardown()


@pytest.fixture
def netns_settings(tmp_path, db_url, sink, home_link):
    assert OWNER == "owner@example.org"  # the owner watcher_config() sets
    return watcher_config(tmp_path, db_url, sink.port, home_link.mx)


def notices(sink, kind: str) -> Counter:
    marker = {"down": "Panne :", "resolved": "Retour à la normale"}[kind]
    with sink.handler.lock:
        received = list(sink.handler.received)
    return Counter(a for r in received if marker in r.message["Subject"] for a in r.rcpt_tos)


def probe_status(db: Database) -> ProbeStatus | None:
    with db.transaction() as session:
        row = session.get(ProbeStatus, 1)
        if row is not None:
            session.expunge(row)
        return row


def committed(site: Path, subject_prefix: str, heading: str) -> bool:
    """HEAD is the status commit we wait for, with status.gmi in it."""
    if not (site / ".git").exists() or not git(site, "rev-parse", "--verify", "-q", "HEAD").strip():
        return False
    show = git(site, "show", "--name-only", "--format=%s", "HEAD").splitlines()
    return (
        bool(show)
        and show[0].startswith(subject_prefix)
        and "status.gmi" in show
        and heading in git(site, "show", "HEAD:status.gmi")
    )


@pytest.mark.parametrize("side", ["home", "host"], ids=["cut-home-side", "cut-host-side"])
def test_drill_across_a_namespace(side, home, home_link, netns_settings, sink):  # noqa: F811
    everyone = set(READERS) | {OWNER}
    export_roster(home, netns_settings.watch.roster)
    db = Database(netns_settings.database.url)
    db.upgrade()
    watcher, stop = Watcher(netns_settings, db), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    site = Path(netns_settings.site.repo)
    thread.start()
    try:
        wait_for(lambda: db_count(db, Subscriber) == len(READERS))
        # The watcher has seen the home MX up across the link before we cut it.
        wait_for(lambda: (s := probe_status(db)) is not None and s.state == "up" and s.successes >= 2)

        home_link.set_link(side, "down")
        cut = time.monotonic()
        route = home_link.route_to_home()
        assert f"dev {home_link.host_if}" in route or "No route to host" in route, route  # never out

        wait_for(lambda: set(notices(sink, "down")) >= set(READERS), timeout=30)
        seconds = time.monotonic() - cut
        print(
            f"\n[{side} side] link cut -> last subscriber notified: {seconds:.2f} s (interval 1, failures 3, timeout 1)"
        )
        wait_for(lambda: OWNER in notices(sink, "down"), timeout=15)
        wait_for(lambda: committed(site, "Outage:", "## Panne en cours"), timeout=15)
        assert "le serveur de courrier ne répond pas" in (site / "status.gmi").read_text()
        assert not notices(sink, "resolved")

        home_link.set_link(side, "up")
        back = time.monotonic()
        wait_for(lambda: set(notices(sink, "resolved")) >= everyone, timeout=30)
        print(f"[{side} side] link up -> everyone told it is resolved: {time.monotonic() - back:.2f} s (recoveries 2)")
        wait_for(lambda: committed(site, "Resolved:", "## Tout va bien"), timeout=15)
        time.sleep(2.5)  # a few more probes over the restored link: nothing more may be sent
        status = probe_status(db)
        assert status is not None and status.state == "up"
    finally:
        stop.set()
        thread.join(timeout=30)
        db.dispose()
    assert not thread.is_alive()
    down, resolved = notices(sink, "down"), notices(sink, "resolved")
    assert dict(down) == {address: 1 for address in everyone}, down
    assert dict(resolved) == {address: 1 for address in everyone}, resolved
    subjects = git(site, "log", "--format=%s").splitlines()
    assert [s for s in subjects if s.startswith(("Outage:", "Resolved:"))] == [
        "Resolved: le serveur de courrier ne répond pas",
        "Outage: le serveur de courrier ne répond pas",
    ]
    # The notice carries the subscriber's own unsubscribe token from home.
    with home.transaction() as session:
        token = session.scalar(select(Subscriber.token).where(Subscriber.address == READERS[0]))
    first = next(r for r in sink.handler.received if READERS[0] in r.rcpt_tos)
    assert first.message["List-Unsubscribe"] == f"<mailto:bla+unsubscribe-{token}@bla.example.org>"
