"""The run key: what makes a message on the broker a message from one of the run's actors.

Xen's toolstack talks to its hypervisor through hypercalls that only dom0 may make;
the project card's actors talk through a broker that anyone with a broker account can
publish to. So every MQTT message of a run is sealed with a key that only the run's
actors hold (``--key-file`` or ``XMIG_RUN_KEY``; ``xmig keygen`` makes one):

    b"XS" | u8 seal version | u8 len(sender) | sender (client id) | 16-byte session
    | u64 seq | f64 wall time | 32-byte HMAC-SHA256 tag | payload (a wire frame)

The tag covers the topic, the sender's client id, the session, its sequence number,
its wall time, what the message is bound to (the tag of the request a reply answers,
or the challenge a liveness proof answers) and the payload. The session is the nonce
the toolstack opens each run with (``new_session``; ``NO_SESSION`` before a run):
a message of one run is no message of the next, even with the same key and run id.
A receiver drops, and counts, what is unsigned, has a wrong tag, repeats a sequence
number it has seen from that sender (``ReplayWindow``), or is stamped more than
``MAX_AGE`` seconds away from its clock; which sender and which session it accepts at
all is ``migrate.transport.admission``'s business (a sender counts once it has answered
this receiver's fresh challenge, so nothing recorded earlier does).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import time
from dataclasses import dataclass

#: The environment variable that may hold the run key (kept out of ``ps``).
KEY_ENV = "XMIG_RUN_KEY"
#: Set to 1 to use a key file that others may read (refused otherwise: whoever reads
#: the key can act as any actor of the run).
LOOSE_OK_ENV = "XMIG_KEY_LOOSE_OK"
#: Shortest key text accepted (``xmig keygen`` writes 64 hex digits).
MIN_KEY_CHARS = 16
#: A key file larger than this is not a key file.
MAX_KEY_FILE = 4096
#: Messages stamped more than this many seconds from the receiver's clock are dropped
#: as stale (clocks of the run's machines must agree to within this).
MAX_AGE = 300.0
#: How many sequence numbers behind the highest seen from a sender are still accepted
#: once (QoS 0 heartbeats and QoS 1 messages may overtake each other).
REPLAY_WINDOW = 4096

_MAGIC = b"XS"
#: 2: the session nonce joined the sealed header.
SEAL_VERSION = 2
SESSION_LEN = 16
_FIXED = struct.Struct(f"<{SESSION_LEN}sQd")   # session, seq, wall time
TAG_LEN = 32
#: The session of messages sent outside a run (claims, proofs, heartbeats of actors
#: waiting for a toolstack).
NO_SESSION = bytes(SESSION_LEN)


class RunKeyError(ValueError):
    """No usable run key (a message the user can act on)."""


class SealError(ValueError):
    """A message that is not sealed, or not sealed with this run's key. ``reason`` is the
    counter it is dropped under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def new_session() -> bytes:
    """A fresh run session nonce (128 random bits)."""
    return secrets.token_bytes(SESSION_LEN)


def new_challenge() -> bytes:
    """A fresh liveness challenge (128 random bits): a peer proves it is live now by
    sealing an answer bound to it."""
    return secrets.token_bytes(16)


def new_key_text() -> str:
    """A fresh run key: 256 random bits as 64 hex digits."""
    return secrets.token_hex(32)


def _key_text(raw: str) -> str:
    """The key as written: an editor's byte-order mark and surrounding whitespace (a
    trailing newline, a CRLF) are not part of it, so every actor derives the same key."""
    return raw.lstrip("\ufeff").strip()


def _derive(text: str) -> bytes:
    # Whatever the user put in the file, the HMAC key is 32 bytes tied to this protocol.
    return hmac.new(b"xmig run key v1", text.encode(), hashlib.sha256).digest()


def load_key(key_file: str | os.PathLike | None = None, *, insecure: bool = False,
             environ: dict | None = None) -> bytes | None:
    """The run key from ``key_file``, else from ``XMIG_RUN_KEY``; None only with
    ``insecure``. Raises ``RunKeyError`` naming what to do."""
    env = os.environ if environ is None else environ
    text = None
    source = ""
    if key_file is not None:
        path = os.fspath(key_file)
        source = f"--key-file {path}"
        try:
            st = os.stat(path)
        except OSError as exc:
            raise RunKeyError(f"--key-file: cannot read {path}: {exc.strerror or exc}") from None
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise RunKeyError(f"--key-file: {path} is not a regular file")
        if st.st_size > MAX_KEY_FILE:
            raise RunKeyError(f"--key-file: {path} is {st.st_size} bytes; a run key file holds one line "
                              "(make one with `xmig keygen`)")
        if st.st_mode & 0o077 and env.get(LOOSE_OK_ENV) != "1":
            raise RunKeyError(f"--key-file: {path} is readable by others (mode {_stat.S_IMODE(st.st_mode):04o}): "
                              f"anyone who reads it can fake this run's messages; chmod 600 {path} "
                              f"(or set {LOOSE_OK_ENV}=1 to use it anyway)")
        try:
            with open(path, "rb") as f:
                text = _key_text(f.read(MAX_KEY_FILE + 1).decode("utf-8"))
        except UnicodeDecodeError:
            raise RunKeyError(f"--key-file: {path}: expected one line of text (UTF-8), found other bytes "
                              "(make one with `xmig keygen`)") from None
        except OSError as exc:
            raise RunKeyError(f"--key-file: cannot read {path}: {exc.strerror or exc}") from None
    elif env.get(KEY_ENV):
        text = _key_text(env[KEY_ENV])
        source = KEY_ENV
    if text is None:
        if insecure:
            return None
        raise RunKeyError(
            "no run key: anyone on the broker could fake this run's messages. Make one with "
            "`xmig keygen --out run.key` and give every actor of the run `--key-file run.key` "
            f"(or set {KEY_ENV}); or pass --insecure to every actor to run unauthenticated")
    if insecure:
        raise RunKeyError(f"--insecure and a run key ({source}) contradict each other: drop one")
    if len(text) < MIN_KEY_CHARS or "\n" in text or "\r" in text:
        raise RunKeyError(f"{source}: expected one line of at least {MIN_KEY_CHARS} characters "
                          "(make one with `xmig keygen`)")
    return _derive(text)


@dataclass(slots=True)
class Opened:
    """A message whose seal checked out."""

    sender: str
    session: bytes
    seq: int
    wall: float
    tag: bytes
    payload: memoryview


def _mac(key: bytes, topic: str, sender: bytes, fixed: bytes, bind: bytes, payload) -> bytes:
    m = hmac.new(key, digestmod=hashlib.sha256)
    t = topic.encode()
    m.update(struct.pack("<HBB", len(t), len(sender), len(bind)))
    m.update(t)
    m.update(sender)
    m.update(fixed)
    m.update(bind)
    m.update(payload)
    return m.digest()


def seal(key: bytes, topic: str, sender: str, seq: int, payload: bytes, *, bind: bytes = b"",
         wall: float | None = None, session: bytes = NO_SESSION) -> bytes:
    """``payload`` sealed for ``topic`` by ``sender`` (its ``seq``-th message) in ``session``."""
    s = sender.encode()
    fixed = _FIXED.pack(session, seq, time.time() if wall is None else wall)
    tag = _mac(key, topic, s, fixed, bind, payload)
    return b"".join((_MAGIC, bytes((SEAL_VERSION, len(s))), s, fixed, tag, payload))


def tag_of(sealed: bytes) -> bytes:
    """The tag of a message ``seal`` made (a reply to it is bound to this)."""
    start = 4 + sealed[3] + _FIXED.size
    return bytes(sealed[start:start + TAG_LEN])


def is_sealed(data) -> bool:
    """Does ``data`` look like a sealed message (of any seal version)?"""
    return len(data) >= 4 and bytes(memoryview(data)[:2]) == _MAGIC


def payload_of(data) -> memoryview:
    """The payload of a sealed message, unchecked (what an ``--insecure`` client can
    still read of a sealed run)."""
    buf = memoryview(data)
    return buf[4 + buf[3] + _FIXED.size + TAG_LEN:]


def sender_of(data) -> str | None:
    """The sender a sealed message claims (unchecked), or None."""
    buf = memoryview(data)
    if len(buf) < 4 or bytes(buf[:2]) != _MAGIC:
        return None
    n = buf[3]
    try:
        return bytes(buf[4:4 + n]).decode()
    except UnicodeDecodeError:
        return None


def unseal(key: bytes, topic: str, data, *, bind: bytes = b"", max_age: float | None = MAX_AGE,
           now: float | None = None) -> Opened:
    """Check the seal of a message received on ``topic``; ``SealError`` if it fails.
    ``max_age=None``: no freshness check (presence claims live as long as their actor)."""
    buf = memoryview(data)
    if len(buf) < 4 or bytes(buf[:2]) != _MAGIC:
        raise SealError("unsigned")
    if buf[2] != SEAL_VERSION:
        raise SealError("version", f"seal v{buf[2]}, this xmig seals v{SEAL_VERSION}")
    n = buf[3]
    head = 4 + n + _FIXED.size
    if len(buf) < head + TAG_LEN:
        raise SealError("malformed", "truncated seal")
    s = bytes(buf[4:4 + n])
    fixed = bytes(buf[4 + n:head])
    tag = bytes(buf[head:head + TAG_LEN])
    payload = buf[head + TAG_LEN:]
    if not hmac.compare_digest(tag, _mac(key, topic, s, fixed, bind, payload)):
        raise SealError("forged")
    session, seq, wall = _FIXED.unpack(fixed)
    if max_age is not None and not abs((time.time() if now is None else now) - wall) <= max_age:
        raise SealError("stale")
    return Opened(s.decode(errors="replace"), session, seq, wall, tag, payload)


class ReplayWindow:
    """Per sender: the highest sequence number seen and which of the ``REPLAY_WINDOW``
    below it were seen (RFC 4303's anti-replay window)."""

    def __init__(self, size: int = REPLAY_WINDOW):
        self.size = size
        self._full = (1 << size) - 1
        self._state: dict[str, tuple[int, int]] = {}

    def accept(self, sender: str, seq: int) -> bool:
        hi, mask = self._state.get(sender, (0, 0))
        if seq > hi:
            shift = seq - hi
            mask = ((mask << shift) | 1) & self._full if shift < self.size else 1
            hi = seq
        else:
            back = hi - seq
            if back >= self.size or mask >> back & 1:
                return False
            mask |= 1 << back
        self._state[sender] = (hi, mask)
        return True

    def start_at(self, sender: str, seq: int) -> None:
        """Count ``sender``'s messages from ``seq`` on only: everything it sent up to
        and including ``seq`` counts as seen (what a receiver accepts from a peer
        starts with the peer's answer to its challenge)."""
        self._state[sender] = (seq, self._full)


__all__ = ["KEY_ENV", "LOOSE_OK_ENV", "MAX_AGE", "NO_SESSION", "SEAL_VERSION", "RunKeyError", "SealError", "Opened",
           "new_key_text", "new_session", "new_challenge", "load_key", "seal", "unseal", "tag_of", "is_sealed",
           "payload_of", "sender_of", "ReplayWindow"]
