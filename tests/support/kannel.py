"""A real Kannel on loopback: bearerbox, smsbox and the fake SMSC driven by `fakesmsc`.

Installs Debian's `kannel` and `kannel-extras` when they are missing (as root), writes a
configuration with free ports into a temporary directory, starts the three processes and
stops them by PID. `fakesmsc` reads one MO per stdin line (``sender receiver text <msg>``)
and logs each MT it receives as ``Got message N: <sender receiver type ... msg>``.

`CallbackSink` is a small HTTP server that records each request Kannel makes to a dlr-url
or post-url, for a test to hand to the channel's `parse_status` / `parse_inbound`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.support.procs import free_port

FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")
PASSWORD = "rig-pass"
_APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def kannel_installed() -> bool:
    return bool(shutil.which("bearerbox") and shutil.which("smsbox") and FAKESMSC.exists())


def ensure_kannel() -> None:
    """Install Kannel when missing; skip (with the reason) only when that is impossible."""
    if kannel_installed():
        return
    if os.geteuid() != 0:
        pytest.skip("Kannel is not installed and installing it needs root (apt-get)")
    install = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "-o",
        "DPkg::Lock::Timeout=300",
        "kannel",
        "kannel-extras",
    ]
    done = subprocess.run(install, env=_APT_ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # a machine whose package lists are stale or empty
        subprocess.run(
            ["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"],
            env=_APT_ENV,
            capture_output=True,
            timeout=600,
        )
        done = subprocess.run(install, env=_APT_ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not kannel_installed():
        raise RuntimeError(f"installing kannel failed:\n{done.stdout[-2000:]}{done.stderr}")


@dataclass(frozen=True)
class Callback:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class CallbackSink:
    """Records every request; answers 200 with an empty body."""

    port: int = 0
    received: list[Callback] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, callback: Callback) -> None:
        with self._lock:
            self.received.append(callback)

    def on(self, path: str) -> list[Callback]:
        with self._lock:
            return [c for c in self.received if c.path == path]


def _query(raw: str) -> dict[str, str]:
    return dict(parse_qsl(raw, keep_blank_values=True, encoding="utf-8", errors="replace"))


@contextmanager
def callback_sink() -> Iterator[CallbackSink]:
    sink = CallbackSink()

    class Handler(BaseHTTPRequestHandler):
        def _take(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            sink.record(
                Callback(
                    method=self.command,
                    path=parts.path,
                    query=_query(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = _take
        do_POST = _take

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class KannelRig:
    workdir: Path
    mo_url: str
    admin_port: int = field(default_factory=free_port)
    smsbox_port: int = field(default_factory=free_port)
    sendsms_port: int = field(default_factory=free_port)
    smsc_port: int = field(default_factory=free_port)
    # With an SMPP port, bearerbox binds to that SMSC instead of running the fake SMSC.
    smpp_port: int | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _fakesmsc: subprocess.Popen[bytes] | None = None

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    @property
    def fakesmsc_log(self) -> Path:
        return self.workdir / "fakesmsc.log"

    def config(self) -> str:
        # Kannel expands `%x` escapes in post-url itself; quotes keep `&` and `?` intact.
        return f"""group = core
admin-port = {self.admin_port}
admin-password = {PASSWORD}
admin-allow-ip = "127.0.0.1"
smsbox-port = {self.smsbox_port}
box-allow-ip = "127.0.0.1"
dlr-storage = internal
log-file = "{self.workdir}/bearerbox.log"
log-level = 1

{self._smsc_group()}

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {self.smsbox_port}
sendsms-port = {self.sendsms_port}
global-sender = 12345
log-file = "{self.workdir}/smsbox.log"
log-level = 1

group = sendsms-user
username = tester
password = {PASSWORD}
max-messages = 10
concatenation = true
user-allow-ip = "127.0.0.1"

group = sms-service
keyword = default
catch-all = true
post-url = "{self.mo_url}"
send-sender = true
max-messages = 0
"""

    def _smsc_group(self) -> str:
        if self.smpp_port is None:
            return f"""group = smsc
smsc = fake
smsc-id = FAKE
port = {self.smsc_port}
connect-allow-ip = 127.0.0.1
"""
        return f"""group = smsc
smsc = smpp
smsc-id = SMPP
host = 127.0.0.1
port = {self.smpp_port}
transceiver-mode = true
smsc-username = kannel
smsc-password = {PASSWORD}
source-addr-ton = 1
source-addr-npi = 1
dest-addr-ton = 1
dest-addr-npi = 1
system-type = "cartback"
reconnect-delay = 1
"""

    def _start(self, args: list[str], log: str, **kwargs: object) -> subprocess.Popen[bytes]:
        handle = (self.workdir / log).open("wb")
        with handle:  # the child keeps its own copy of the descriptor
            process: subprocess.Popen[bytes] = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdout=handle,
                stderr=subprocess.STDOUT,
                **kwargs,  # type: ignore[call-overload]
            )
        self.processes.append(process)
        return process

    def _admin_status(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/status.txt?password={PASSWORD}"
        try:
            import httpx

            return httpx.get(url, timeout=1.0).text
        except Exception:
            return ""

    def start(self) -> None:
        conf = self.workdir / "kannel.conf"
        conf.write_text(self.config())
        self._start(["bearerbox", "-v", "1", str(conf)], "bearerbox.out")
        wait_until(lambda: _listening(self.smsbox_port), 20, "bearerbox to listen")
        self._start(["smsbox", "-v", "1", str(conf)], "smsbox.out")
        wait_until(lambda: _listening(self.sendsms_port), 20, "smsbox to listen")
        if self.smpp_port is None:
            # -v 0: fakesmsc logs each MT it receives at debug level in interactive mode.
            self._fakesmsc = self._start(
                [str(FAKESMSC), "-v", "0", "-H", "127.0.0.1", "-r", str(self.smsc_port)],
                "fakesmsc.log",
                stdin=subprocess.PIPE,
            )
        wait_until(lambda: "(online " in self._admin_status(), 20, "the SMSC to come online")

    def type_mo(self, sender: str, receiver: str, text: str) -> None:
        """Type one MO into fakesmsc, as a phone sending `text` would."""
        assert self._fakesmsc is not None and self._fakesmsc.stdin is not None
        self._fakesmsc.stdin.write(f"{sender} {receiver} text {text}\n".encode())
        self._fakesmsc.stdin.flush()

    def received(self) -> list[str]:
        """What fakesmsc logged for each MT it got: `sender receiver type ... msg`."""
        text = self.fakesmsc_log.read_text("utf-8", "replace")
        return re.findall(r"Got message \d+: <(.*)>", text)

    def stop(self) -> None:
        # smsbox first, so it never queues against a gone bearerbox; each by its own PID.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    # bearerbox behind an SMPP bind lingers ~10 s after SIGTERM: don't wait it out.
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdin is not None:
                process.stdin.close()
