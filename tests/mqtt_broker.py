"""A real Mosquitto for the MQTT tests: one per test, on a free loopback port.

The config: TCP_NODELAY (``docs/mqtt.md`` asks it of every broker: else Nagle + delayed
ACK make each QoS 1 round trip ~88 ms), no queue limit (else Mosquitto silently drops
messages for a slow subscriber), no persistence, the log on stdout (it drops
privileges and cannot write a log file in a root-owned folder).

Where the binary is absent the tests skip with the reason, except under CI (``CI``
set), where a missing broker is a failure: CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")

#: The run key of the tests' actors (``XMIG_RUN_KEY`` for their subprocesses).
TEST_KEY_TEXT = "xmig-tests-run-key-5f1c0de2a9b34e77"


def test_key() -> bytes:
    from migrate.transport.runkey import KEY_ENV, load_key

    return load_key(environ={KEY_ENV: TEST_KEY_TEXT})


test_key.__test__ = False   # (not a test: pytest collects test_* names)


def key_env(**extra: str) -> dict[str, str]:
    """The environment of an actor subprocess that holds the tests' run key."""
    return {**os.environ, "XMIG_RUN_KEY": TEST_KEY_TEXT, **extra}


def mosquitto_binary() -> str | None:
    for c in CANDIDATES:
        found = shutil.which(c) or (c if os.path.isabs(c) and os.access(c, os.X_OK) else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    """A running Mosquitto; ``kill()`` stops it at once (a broker lost mid-run)."""

    binary: str
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen | None = None
    extra: str = ""          # more config lines (TLS, passwords)
    scheme: str = "mqtt"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "Broker":
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (self.extra or "allow_anonymous true\n")
            + "persistence false\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 0\n"
            "log_dest stdout\n"
        )
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_broker(tmp_path: Path) -> Broker:
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (CI must install it: apt-get install -y mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto); the MQTT tests need a real broker")
    port = free_port()
    return Broker(binary, port, tmp_path / "mosquitto.conf", tmp_path / "mosquitto.log").start()


@pytest.fixture
def mqtt_broker(tmp_path):
    """A Mosquitto on a free loopback port, killed after the test."""
    broker = start_broker(tmp_path)
    try:
        yield broker
    finally:
        broker.kill()


def start_tls_broker(tmp_path: Path, username: str, password: str) -> Broker:
    """A Mosquitto with TLS (a throwaway CA and a certificate for 127.0.0.1) and a
    password file: what a shared class broker should look like."""
    binary = mosquitto_binary()
    if binary is None or shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto, mosquitto_passwd and openssl are needed (apt-get install -y mosquitto openssl)")
        pytest.skip("mosquitto, mosquitto_passwd or openssl is not installed")
    d = tmp_path

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=d, check=True, capture_output=True)

    # What Python 3.13's strict X.509 checking (VERIFY_X509_STRICT) wants, and what the
    # manual (docs/mqtt.md, "Untrusted brokers") asks of a class CA: a CA marked
    # critical CA:TRUE with keyUsage keyCertSign/cRLSign; a server certificate with the
    # broker's address in its SAN, keyUsage and extendedKeyUsage serverAuth, and key
    # identifiers linking the two.
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=xmig test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash", "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                               "authorityKeyIdentifier=keyid,issuer\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    run("mosquitto_passwd", "-b", "-c", str(d / "passwords"), username, password)
    extra = (f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
             f"allow_anonymous false\npassword_file {d / 'passwords'}\nuser root\n")
    return Broker(binary, free_port(), d / "mosquitto.conf", d / "mosquitto.log", extra=extra, scheme="mqtts").start()
