"""The contrib Postfix snippets, proved with a real Postfix: a private instance (its own
config, queue and data directories, smtpd on a free loopback port) is configured with the
lines of contrib/postfix/{main.cf,transport,master.cf} and relays the list domain to
listbridge over LMTP, SMTP, or the `listbridge deliver` pipe. Everything else Postfix sends
(bounces) goes to the conftest sink, which also stands in for listbridge's own relay."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from listbridge.config import Settings
from listbridge.db import Database
from listbridge.lists.context import ListContext
from listbridge.lists.context import send as queue_mail
from listbridge.lists.subscriptions import subscribe
from listbridge.models import Comment, Confirmation, OutboxBounce, OutboxRecipient, Subscriber
from listbridge.service import Service

from helpers import Received, Sink, db_count, free_port, send, wait_for

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
POSTQUEUE = Path("/usr/sbin/postqueue")
POSTMAP = Path("/usr/sbin/postmap")
CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "postfix"
DOMAIN = "bla.example.org"
READER = "carole@example.net"
PIPE_USER = "nobody"  # runs `listbridge deliver`; must not be root (pipe(8) refuses it)

pytestmark = [
    pytest.mark.skipif(
        not all(p.exists() for p in (POSTFIX, POSTCONF, POSTQUEUE, POSTMAP)),
        reason="Postfix is not installed (/usr/sbin/postfix missing; apt-get install postfix)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a private Postfix instance needs root"),
]


# --- the contrib snippets -------------------------------------------------------------------


def contrib_main_cf(pipe: bool = False) -> dict[str, str]:
    """`name = value` settings of contrib/postfix/main.cf; with `pipe`, also the commented-out
    `listbridge_*` ones meant for the pipe transport."""
    settings: dict[str, str] = {}
    for line in (CONTRIB / "main.cf").read_text(encoding="utf-8").splitlines():
        if pipe and line.startswith("#listbridge_"):
            line = line[1:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        settings[name.strip()] = value.strip()
    return settings


def contrib_transport(kind: str) -> str:
    """The contrib/postfix/transport line whose next hop starts with `kind` (uncommented)."""
    for line in (CONTRIB / "transport").read_text(encoding="utf-8").splitlines():
        fields = line.lstrip("#").split()
        if len(fields) == 2 and fields[0] == DOMAIN and fields[1].startswith(kind):
            return f"{fields[0]}\t{fields[1]}\n"
    raise AssertionError(f"contrib/postfix/transport has no {kind!r} line for {DOMAIN}")


def contrib_master_cf() -> str:
    """The `listbridge` service of contrib/postfix/master.cf, with its continuation lines."""
    entry: list[str] = []
    for line in (CONTRIB / "master.cf").read_text(encoding="utf-8").splitlines():
        if line.startswith("listbridge") or entry and line[:1] in (" ", "\t") and line.strip():
            entry.append(line)
        elif entry:
            break
    assert entry, "contrib/postfix/master.cf has no listbridge service"
    return "\n".join(entry) + "\n"


# --- a private Postfix ------------------------------------------------------------------------

# Only the services this test needs; chroot off (nothing to copy into the queue directory).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
flush     unix  n - n 1000? 0 flush
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """One private Postfix instance under `base`; `start()` returns once smtpd answers."""

    def __init__(self, base: Path, relay_port: int) -> None:
        self.config = base / "etc"
        self.queue = base / "spool"
        self.data = base / "lib"
        self.port = free_port()
        self.relay_port = relay_port
        self.started = False
        for path in (self.config, self.queue, self.data):
            path.mkdir(parents=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data, postfix_user.pw_uid, postfix_user.pw_gid)

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed: {result.stderr or result.stdout}\n{self.log()}")
        return result

    def configure(self, main_cf: dict[str, str], transport: str, master_extra: str = "") -> None:
        (self.config / "main.cf").write_text("", encoding="utf-8")
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port) + master_extra, encoding="utf-8")
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "maillog_file": str(self.config / "maillog"),
            "maillog_file_prefixes": str(self.config),
            # A fixed name: nothing depends on how this host is named.
            "myhostname": "mx.postfix-test.invalid",
            "mydomain": "postfix-test.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Everything not for the list (the bounces) goes to the sink.
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            # Retry at once, so that a flush is all a test waits for.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "in_flow_delay": "0",
            "smtp_connection_cache_on_demand": "no",
            "lmtp_connection_cache_on_demand": "no",
            "delay_warning_time": "0",
        }
        # The contrib lines, with their paths moved into this instance.
        for name, value in main_cf.items():
            settings[name] = value.replace("/etc/postfix/", f"{self.config}/")
        self.run(POSTCONF, "-c", self.config, "-e", *(f"{k}={v}" for k, v in settings.items()))
        (self.config / "transport").write_text(transport, encoding="utf-8")
        self.run(POSTMAP, "-c", self.config, f"hash:{self.config / 'transport'}")

    def start(self) -> None:
        self.started = True  # from here on, stop() has something to stop
        self.run(POSTFIX, "-c", self.config, "start")

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    return conn.recv(100).startswith(b"220")
            except OSError:
                return False

        wait_for(listening, timeout=15)

    def flush(self) -> None:
        self.run(POSTQUEUE, "-c", self.config, "-f", check=False)

    def queue_listing(self) -> str:
        return self.run(POSTQUEUE, "-c", self.config, "-p", check=False).stdout

    def log(self) -> str:
        path = self.config / "maillog"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no maillog)"

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self.run(POSTFIX, "-c", self.config, "stop", check=False)
        if pid is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # our own master, by its pid file


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Postfix's directories and the pipe's files: not under pytest's tmp_path, whose root-only
    parent the postfix user (data_directory) and the pipe user cannot traverse."""
    path = Path(tempfile.mkdtemp(prefix="listbridge-postfix-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postfix(workdir: Path, sink: Sink) -> Iterator[Postfix]:
    instance = Postfix(workdir / "postfix", sink.port)
    try:
        yield instance
    finally:
        instance.stop()


# --- the checks shared by the three transports -----------------------------------------------


def from_(sender: str) -> Callable[[Received], bool]:
    """Mail from this envelope sender; "" is the null sender (the sink records it as "<>")."""
    return lambda r: r.mail_from == (sender or "<>")


def wait_mail(
    postfix: Postfix, sink: Sink, to: str, match: Callable[[Received], bool], wakeup: Callable[[], None] | None = None
) -> Received:
    """The first mail to `to` that `match`es at the sink; flushes Postfix (and wakes the
    outbox workers) every second meanwhile."""
    last_flush = [0.0]

    def arrived() -> Received | None:
        found = [r for r in sink.handler.to(to) if match(r)]
        if found:
            return found[0]
        if time.monotonic() - last_flush[0] > 1:
            last_flush[0] = time.monotonic()
            postfix.flush()
            if wakeup is not None:
                wakeup()
        return None

    try:
        return wait_for(arrived, timeout=20)
    except AssertionError:
        details = f"queue:\n{postfix.queue_listing()}\nmaillog:\n{postfix.log()}"
        raise AssertionError(f"no mail to {to} arrived\n{details}") from None


def walk(postfix: Postfix, sink: Sink, db: Database, wakeup: Callable[[], None] | None = None) -> None:
    """A subscribe request, an unknown list address and a null-sender mail, through Postfix."""
    send(postfix.port, f"bla+subscribe@{DOMAIN}", subject="subscribe")
    send(postfix.port, f"nolist@{DOMAIN}", subject="lost")
    send(postfix.port, f"bla+help@{DOMAIN}", subject="a bounce", envelope_from="", sender="dan@example.net")
    postfix.flush()

    # The subscribe request was stored and its confirmation reached the relay.
    bounces = re.compile(rf"bla\+bounces-[a-z2-7]+@{re.escape(DOMAIN)}")  # its own bounce address
    request = wait_mail(postfix, sink, READER, lambda r: bool(bounces.fullmatch(r.mail_from)), wakeup)
    assert re.fullmatch(rf"bla\+confirm-[a-z2-7]{{26}}@{re.escape(DOMAIN)}", request.message["Reply-To"])
    assert db_count(db, Confirmation, Confirmation.address == READER) == 1

    # The unknown address was refused by listbridge, so Postfix bounced it to the sender.
    bounce = wait_mail(postfix, sink, READER, from_(""), wakeup)
    report = bounce.data.decode("utf-8", errors="replace")
    assert f"nolist@{DOMAIN}" in report and "5.1.1" in report, report

    # Postfix's queue is empty: nothing deferred, nothing left over.
    def queue_empty() -> bool:
        if "Mail queue is empty" in postfix.queue_listing():
            return True
        postfix.flush()
        return False

    wait_for(queue_empty, timeout=10)

    # Nothing was stored for the unknown address or the null-sender mail, nothing else was sent.
    assert db_count(db, Comment) == 0
    assert db_count(db, Confirmation) == 1
    assert db_count(db, OutboxRecipient) == 1
    assert [r.rcpt_tos for r in sink.handler.received] == [[READER], [READER]]


# --- the three transports ---------------------------------------------------------------------


@pytest.mark.parametrize("transport, lmtp", [("lmtp:", True), ("smtp:", False)])
def test_relayed_to_serve(
    postfix: Postfix, sink: Sink, make_settings: Callable[..., Settings], transport: str, lmtp: bool
) -> None:
    """The contrib transport line for LMTP, then for SMTP, in front of a real `serve`."""
    settings = make_settings(smtp={"lmtp": lmtp})
    postfix.configure(contrib_main_cf(), contrib_transport(transport).replace("8025", str(settings.smtp.port)))
    service = Service(settings)
    service.start()
    try:
        postfix.start()
        walk(postfix, sink, service.db)
    finally:
        service.stop()


# --- the pipe ---------------------------------------------------------------------------------


def installed_listbridge() -> Path:
    """The `listbridge` script installed with the running interpreter (not a pyenv shim)."""
    script = Path(sysconfig.get_path("scripts")) / "listbridge"
    if not script.exists():
        pytest.skip(f"no installed listbridge script next to this Python ({script})")
    return script


def pipe_user_can_run(script: Path) -> str | None:
    """None if PIPE_USER can run `listbridge --help`, else why not."""
    try:
        pwd.getpwnam(PIPE_USER)
    except KeyError:
        return f"there is no user {PIPE_USER!r} to run the pipe as"
    result = subprocess.run(
        ["runuser", "-u", PIPE_USER, "--", str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    if result.returncode == 0:
        return None
    first = (result.stderr or result.stdout).strip().splitlines()[:1]
    return f"user {PIPE_USER!r} cannot run {script} ({first[0] if first else f'exit {result.returncode}'})"


def test_pipe(postfix: Postfix, sink: Sink, make_settings: Callable[..., Settings], db_url: str, workdir: Path) -> None:
    script = installed_listbridge()
    reason = pipe_user_can_run(script)
    if reason:
        pytest.skip(f"pipe transport: {reason}; install listbridge where the pipe user can run it")
    # The pipe user's own directory: the configuration it reads, the SQLite database it writes.
    user = pwd.getpwnam(PIPE_USER)
    home = workdir / "pipe"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)

    url = db_url if not db_url.startswith("sqlite") else f"sqlite:///{home / 'listbridge.sqlite3'}"
    settings = make_settings(database={"url": url}, site={"repo": str(home / "site")})
    db = Database(url)
    db.upgrade()
    db.dispose()
    if url.startswith("sqlite"):
        # SQLite gives its -wal/-shm files the owner of the database file, even for root.
        os.chown(home / "listbridge.sqlite3", user.pw_uid, user.pw_gid)
    config = home / "listbridge.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n[site]\nrepo = "{home / "site"}"\n\n'
        f'[[lists]]\naddress = "bla@{DOMAIN}"\ntitle = "bla"\nowner = "owner@example.org"\nlanguage = "en"\n',
        encoding="utf-8",
    )
    os.chown(config, user.pw_uid, user.pw_gid)

    service_entry = (
        contrib_master_cf()
        .replace("/usr/local/bin/listbridge", str(script))
        .replace("/etc/listbridge/listbridge.toml", str(config))
        .replace("user=listbridge", f"user={PIPE_USER}")
    )
    postfix.configure(contrib_main_cf(pipe=True), contrib_transport("listbridge:"), service_entry)
    # `listbridge deliver` only queues the confirmation; a `serve` on the same database sends it.
    service = Service(settings)
    service.start()
    try:
        postfix.start()
        walk(postfix, sink, service.db, wakeup=service.wakeup.set)
    finally:
        service.stop()


# --- a real DSN -----------------------------------------------------------------------------


def test_a_dsn_from_postfix_comes_back_to_the_verp_address_and_counts(
    postfix: Postfix, sink: Sink, make_settings: Callable[..., Settings]
) -> None:
    """listbridge relays through Postfix, which cannot deliver to a subscriber (the error
    transport: no such mailbox) and sends its own DSN to the mail's VERP address; that comes
    back to `serve` through the contrib transport line, and with threshold 1 turns the
    subscriber's delivery off."""
    dead = "gone@dead.example.net"
    settings = make_settings(relay={"host": "127.0.0.1", "port": postfix.port, "timeout": 10}, bounces={"threshold": 1})
    transport = contrib_transport("smtp:").replace("8025", str(settings.smtp.port))
    # Accepted, then bounced by Postfix's queue manager, as a mailbox lost after the RCPT check.
    main_cf = {**contrib_main_cf(), "smtpd_reject_unlisted_recipient": "no"}
    postfix.configure(main_cf, transport + "dead.example.net\terror:5.1.1 no such mailbox here\n")
    service = Service(settings)
    service.start()
    try:
        postfix.start()
        ctx = ListContext(settings, settings.lists[0])
        with service.db.transaction() as session:
            subscribe(session, ctx, dead)
            queue_mail(session, ctx, "help", dead)  # one recipient: sent from its own bounce address
        service.wakeup.set()

        def disabled() -> bool:
            postfix.flush()
            with service.db.transaction() as session:
                return session.scalar(select(Subscriber.disabled_at).where(Subscriber.address == dead)) is not None

        try:
            wait_for(disabled, timeout=20)
        except AssertionError:
            raise AssertionError(f"the DSN did not count\nmaillog:\n{postfix.log()}") from None
        owner = wait_mail(postfix, sink, "owner@example.org", lambda r: "turned off" in r.message["Subject"])
        assert dead in owner.message.get_content()
        with service.db.transaction() as session:
            row = session.scalar(select(OutboxRecipient.id).where(OutboxRecipient.address == dead))
            assert session.get(OutboxBounce, row) is not None  # `queue list` shows it bounced
        assert "status=bounced" in postfix.log()  # Postfix's own bounce, not one made up here
    finally:
        service.stop()
