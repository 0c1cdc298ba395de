"""Admission: which messages on the broker belong to this run, now.

A Xen toolstack knows its hypervisor is live because it is the same machine; the
project card's actors only share a broker, where anything published can be recorded
and published again. So besides the seal (``migrate.transport.runkey``: this run's
key), a message must come from a client that is live now and belong to the run's
current session:

- Liveness. Every client makes a fresh random challenge when it connects and shows
  it in its hello (at start) and in its retained claim. A client that holds a claim
  answers each other client's challenge once, with a *proof*: a sealed message bound
  to that challenge (``proof/<actor>/<client>``). A receiver counts a sender (its
  heartbeats, its calls, its replies, its events) only from that sender's proof on,
  so a claim, heartbeats or calls recorded earlier, replayed into a receiver that was
  not there, never count: their sender cannot answer the receiver's challenge.
- Session. The toolstack opens each run with a fresh nonce (``runkey.new_session``);
  its proofs carry it, every sealed message carries its sender's session, and the
  hypervisor, the guest and watchers take the session of the live toolstack that
  proved itself to them (the first one, while it is live). Calls, replies and events
  of any other session (an earlier run of the same run id and key) are dropped.

What fails is dropped, counted per reason (``DROP_REASONS``) and logged once per reason.
An ``--insecure`` peer on a sealed run, or a sealed run seen by an ``--insecure``
client, is named in one line (``Admission.mismatch``) instead of a silent wait.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import Callable

from migrate.errors import PeerLost, RunRefused
from migrate.transport import runkey
from migrate.transport.base import ACTORS, _Peers

log = logging.getLogger("xmig.mqtt")

#: Why a message was dropped, as the counters name it.
DROP_REASONS = {
    "unsigned": "not sealed with a run key",
    "forged": "sealed with another key (or altered)",
    "version": "sealed by another xmig version (run the same xmig on every actor)",
    "replayed": "a sequence number already seen from its sender",
    "stale": f"stamped more than {runkey.MAX_AGE:g} s away from this clock",
    "wrong-sender": "sent by another actor than its topic belongs to",
    "unproven": "from a client that has not proved to this one that it is live on the run "
                "(a recorded message replayed, or a client that left)",
    "other-session": "of another session of this run id (an earlier run replayed, or a second toolstack)",
    "malformed": "not a message this xmig knows",
    "oversized": "arrays larger than the frame justifies",
    "empty": "an empty (retained-clearing) message",
}

#: The kinds of message (by topic) that belong to a session: the run itself.
SESSION_KINDS = ("rpc", "reply", "events", "snapshot")


def actor_of(client_id: str) -> str:
    """``xmig-<actor>-<hex>`` -> ``<actor>`` (client ids are made by ``MqttTransport``)."""
    parts = client_id.split("-")
    return parts[1] if len(parts) == 3 and parts[0] == "xmig" else ""


class Admission:
    """The seal, liveness and session checks of one client on one run."""

    def __init__(self, key: bytes | None, client_id: str, actor: str, run_id: str, peers: _Peers,
                 timeout: float, on_mismatch: Callable[[str], None] | None = None):
        self.key = key
        self.client_id = client_id
        self.actor = actor
        self.run_id = run_id
        self.peers = peers
        self.timeout = timeout
        self.on_mismatch = on_mismatch
        #: This client's challenge: what a peer's proof must be bound to.
        self.challenge = runkey.new_challenge()
        #: The run's current session (the live toolstack's; the toolstack's own).
        self.session = runkey.NO_SESSION
        #: The toolstack client whose session is current.
        self.holder: str | None = None
        self.proven: set[str] = set()          # senders that answered our challenge
        self.challenges: dict[str, bytes] = {}  # client id -> its challenge (hello or claim)
        self.proved_to: set[str] = set()
        self.window = runkey.ReplayWindow()
        self._seq = itertools.count(1)
        self.dropped: collections.Counter = collections.Counter()
        self._logged: set[str] = set()
        #: Clients seen on the run that cannot take part: ``--insecure`` ones on a
        #: sealed run (or, for an ``--insecure`` client, sealed ones).
        self.strangers: dict[str, str] = {}
        self.mismatch: str | None = None
        self.claimed = False

    # ------------------------------------------------------------------ sealing

    def seal(self, topic: str, payload: bytes, bind: bytes = b"") -> bytes:
        if self.key is None:
            return payload
        return runkey.seal(self.key, topic, self.client_id, next(self._seq), payload, bind=bind,
                           session=self.session)

    def open_session(self) -> None:
        """The toolstack opens its run: a fresh session that every message carries."""
        self.session = runkey.new_session()
        self.holder = self.client_id

    def drop(self, reason: str, topic: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("%s dropped a message on %s: %s%s (further ones are counted, not logged)",
                        self.actor, topic, DROP_REASONS.get(reason, reason), f" ({detail})" if detail else "")

    def drop_summary(self) -> str:
        return ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items()))

    def proven_now(self, payload) -> bool:
        """Has the sender named in this sealed ``payload`` proved itself live to us (so
        its retained state can be judged now, not dropped as unproven)?"""
        if self.key is None or not runkey.is_sealed(payload):
            return True
        sender = runkey.sender_of(payload)
        return sender in self.proven and sender not in self.peers.gone

    def heard(self, sender: str | None, payload: bytes, topic: str, actor: str) -> None:
        """A heartbeat or a proof of ``sender`` (of ``actor``): it is live now."""
        if sender is None:             # (no key: the message names its client)
            beat = self.decode(payload, topic)
            sender = beat.get("client") if isinstance(beat, dict) else None
            if not isinstance(sender, str):
                return
        self.peers.seen(actor)
        self.peers.heard[sender] = time.monotonic()

    def decode(self, payload, topic: str):
        """The message in ``payload``, or None (dropped and counted) if it is not one
        this xmig knows."""
        from migrate.codec import wire

        try:
            return wire.decode(payload)
        except wire.FrameTooLarge as exc:
            self.drop("oversized", topic, str(exc))
        except wire.WireError as exc:
            self.drop("malformed", topic, str(exc))
        return None

    # ------------------------------------------------------------------ checks

    def open(self, topic: str, kind: str, parts: list[str], payload, bind: bytes | None = b""):
        """(sender, payload) of a message that belongs to the run now; None (dropped
        and counted, or ignored) otherwise. Without a key: (None, payload)."""
        if not payload:
            self.drop("empty", topic)
            return None
        if self.key is None:
            if runkey.is_sealed(payload):
                if not (kind == "presence" and self._gone(runkey.payload_of(payload))):
                    self._sealed_run(runkey.sender_of(payload) or "?")
                return None
            return None, bytes(payload)
        if bind is None:
            return None                # a reply to no call of ours (or one that timed out)
        if kind == "proof":
            bind = self.challenge
        try:
            opened = runkey.unseal(self.key, topic, payload, bind=bind,
                                   max_age=None if kind == "presence" else runkey.MAX_AGE)
        except runkey.SealError as exc:
            if exc.reason == "unsigned" and kind == "presence" and self._insecure_peer(parts, payload):
                self.dropped["unsigned"] += 1      # (named in its own line)
            else:
                self.drop(exc.reason, topic, "" if exc.reason in ("unsigned", "forged") else str(exc))
            return None
        sender = opened.sender
        if not self._right_sender(kind, parts, sender):
            self.drop("wrong-sender", topic, sender[:60])
            return None
        if kind == "presence":
            # State, not a stream: a claim or "gone" may be delivered again (retained)
            # and means the same; a claim counts only once its client proves itself.
            return sender, bytes(opened.payload)
        if kind == "proof":
            if sender in self.proven:
                if not self.window.accept(sender, opened.seq):
                    self.drop("replayed", topic)
                    return None
            else:
                # Count this sender from its answer on: what it sent before is no news.
                self.window.start_at(sender, opened.seq)
                self.proven.add(sender)
            if parts[3] == "toolstack":
                self._adopt(sender, opened.session)
            return sender, bytes(opened.payload)
        if kind != "sync" and (sender not in self.proven or sender in self.peers.gone):
            if kind != "alive":        # a heartbeat before the proof is no news: ignored
                self.drop("unproven", topic, sender[:60])
            return None
        if kind in SESSION_KINDS and (opened.session != self.session or self.session == runkey.NO_SESSION):
            self.drop("other-session", topic, sender[:60])
            return None
        if kind == "snapshot":
            # State, not a stream (retained, so sealed before the sender's proof): its
            # session and freshness stand for it; an older one of the session says
            # which batches it holds, so it cannot make a watcher count one twice.
            return sender, bytes(opened.payload)
        if not self.window.accept(sender, opened.seq):
            self.drop("replayed", topic)
            return None
        return sender, bytes(opened.payload)

    def _right_sender(self, kind: str, parts: list[str], sender: str) -> bool:
        if kind == "presence":
            return sender == parts[4] and actor_of(sender) == parts[3]
        if kind in ("alive", "events", "proof", "snapshot"):
            return actor_of(sender) == parts[3]
        if kind == "reply":
            return actor_of(sender) == parts[2]
        if kind == "sync":
            return sender == self.client_id
        return actor_of(sender) in ACTORS        # rpc: any actor of the run may call

    def _adopt(self, cid: str, session: bytes) -> None:
        """A toolstack proved itself: its session becomes the run's unless another live
        toolstack holds it (a second toolstack is refused at its claim; this is the race)."""
        if self.actor == "toolstack" or session == runkey.NO_SESSION:
            return
        h = self.holder
        if h is None or h == cid or h in self.peers.gone or \
                time.monotonic() - self.peers.heard.get(h, -1e18) >= self.timeout:
            self.holder, self.session = cid, session

    # ------------------------------------------------------------------ membership

    def presence(self, actor: str, cid: str, claim: dict, topic: str) -> bool:
        """A hello, a claim or a "gone" (decoded) on ``presence/<actor>/<cid>``; True
        when this client now owes someone a proof."""
        peers = self.peers
        members = peers.present.setdefault(actor, set())
        if claim.get("gone") == cid:
            peers.gone.add(cid)
            if cid in members:
                members.discard(cid)
                if cid != self.client_id and not members:
                    peers.lose(actor, PeerLost(f"{actor} left the run (its connection to the broker closed)", actor))
            return False
        hello = claim.get("hello") == cid
        if claim.get("actor") != actor or (not hello and claim.get("client") != cid):
            self.drop("malformed", topic, "a claim for another client")
            return False
        if cid in peers.gone or cid == self.client_id:
            return False               # a client that left does not come back
        challenge = claim.get("challenge")
        if isinstance(challenge, bytes):
            self.challenges.setdefault(cid, challenge)
        if not hello:
            members.add(cid)
            peers.changed.set()
            peers.changed = asyncio.Event()
        return cid not in self.proved_to

    async def refuse_squatters(self, display: str) -> None:
        """Before this client claims its actor: ``RunRefused`` if another client of
        that actor is live on the run. A claim counts only once its client proves itself
        live to us (it answers our hello's challenge), so the claim of a client that is
        gone, or one recorded and replayed, does not squat the run id: it is ignored
        after ``timeout`` seconds."""
        if self.mismatch is not None:
            raise RunRefused(self.mismatch)
        others = self.peers.present.get(self.actor, set()) - {self.client_id}
        if not others or self.actor == "watch":
            return
        deadline = time.monotonic() + self.timeout
        while True:
            live = self.peers.live(self.actor, self.timeout) - {self.client_id}
            if live:
                raise RunRefused(f"run id {self.run_id!r} already has a {self.actor} ({sorted(live)[0]}) "
                                 f"on {display}; choose another --run")
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        log.warning("ignored a claim of %s on run %r by %s, which did not prove it is live within %g s",
                    self.actor, self.run_id, ", ".join(sorted(others)), self.timeout)
        for cid in others:
            self.peers.present[self.actor].discard(cid)
            self.peers.gone.add(cid)

    def proof_due(self, claimed: bool) -> list[str]:
        """The clients this one owes a proof now (it proves only while it holds a claim,
        and watchers prove nothing: nobody waits for them)."""
        if not claimed or self.actor == "watch":
            return []
        due = [c for c in self.challenges if c not in self.proved_to and c not in self.peers.gone]
        self.proved_to.update(due)
        return due

    # ------------------------------------------------------------------ strangers

    def _insecure_peer(self, parts: list[str], payload) -> bool:
        """An unsealed hello or claim on a sealed run: a peer started with ``--insecure``,
        named once. False if it is not one."""
        from migrate.codec import wire

        try:
            msg = wire.decode(payload)
        except wire.WireError:
            return False
        cid = parts[4]
        if not (isinstance(msg, dict) and msg.get("actor") == parts[3]):
            return False
        if cid not in self.strangers:
            self.strangers[cid] = parts[3]
            log.warning("%s: a %s without the run key (%s, started with --insecure?) is on sealed run %r; "
                        "its messages are dropped: give it the run's --key-file", self.actor, parts[3], cid,
                        self.run_id)
        return True

    @staticmethod
    def _gone(payload) -> bool:
        """Is this the "gone" of a client that left (a retained leftover of an earlier run)?"""
        from migrate.codec import wire

        try:
            msg = wire.decode(payload)
        except (wire.WireError, ValueError):
            return False
        return isinstance(msg, dict) and "gone" in msg

    def _sealed_run(self, sender: str) -> None:
        if sender in self.strangers:
            return
        self.strangers[sender] = actor_of(sender)
        if self.mismatch is None:
            self.mismatch = (f"run {self.run_id!r} is sealed with a run key (its {actor_of(sender) or 'peer'} "
                             f"{sender[:60]} sent a sealed message) but this {self.actor} runs --insecure and "
                             "cannot check it: give it the run's --key-file")
            if self.claimed and self.actor != "watch":
                log.warning("%s", self.mismatch)   # (before its claim, or a watcher: raised instead)
            if self.on_mismatch is not None:
                self.on_mismatch(self.mismatch)

    def stranger_note(self, actor: str) -> str:
        """``; a <actor> started with --insecure is on it (...)`` for a wait that timed out."""
        who = sorted(c for c, a in self.strangers.items() if a == actor)
        if not who or self.key is None:
            return ""
        return f"; a {actor} without the run key is on it ({who[0]}, started with --insecure?)"


__all__ = ["Admission", "DROP_REASONS", "SESSION_KINDS", "actor_of"]
