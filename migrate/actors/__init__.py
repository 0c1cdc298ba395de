"""The three actors over any transport: a hypervisor, a guest and a toolstack process.

Mirrors the split of a real Xen host: the hypervisor holds the domain and schedules
the guest's vCPUs; the guest runs its own kernel (here: ``guest.Guest``) and traps
into the hypervisor with hypercalls; the toolstack (libxenctrl + xg_sr_save) drives
the domain through domctls. ``migrate.toolstack.control.LocalSource`` wires them in one
process; this package wires the same objects through a ``migrate.transport.base.Transport``
(in process, or MQTT: nothing here knows which):

- ``hypervisor.serve_hypervisor``: builds a ``hypervisor.domain.Hypervisor`` on the toolstack's
  ``create`` and serves the ``DomainControl`` calls through ``LocalDomain`` itself, so
  every reply carries exactly the events ``forward_events`` would have published
  in-process (the toolstack republishes them in the same order: same report). The
  synchronous hypervisor runs in one worker thread; its guest is a ``RemoteGuest``
  whose ``run(t0, t1)`` generator serves spans between balloon activity from windows
  of writes the guest sends ahead (``go``), and runs a span where the balloon acts
  in one round trip, its hypercalls speculated (``spec_miss`` if Xen did less).
- ``guest.serve_guest``: holds the ``Guest`` and answers ``layout``, ``go``, ``run``, ``resume``,
  ``spec_miss``, ``spec_abort``, ``close``.
- ``toolstack.RemoteSource`` / ``RemoteDomain``: the toolstack's ``SourceSide``, passed to
  ``run_scenario(..., source_factory=...)``.

Batching, all exact (the same calls reach the same Hypervisor at the same virtual
times): the saver's batches go as spans (``DomainControl.serve_span``): one round trip
carries the PFNs of a run of batches, the link model that times them and the save's
deadline, and the hypervisor answers for as many as ``hypervisor/span.py`` can serve at
once, as in process; a batch a span stops before goes as its two calls. Every reply
carries the hypervisor's counters, so ``counters`` needs no round trip. Calls that
cannot run the guest are served on the event loop, the others in the worker thread.

Faults: a peer that dies or stops answering makes the call raise ``PeerLost`` (a
``MigrationAborted``: the engine aborts and "resumes" the source); the hypervisor
resumes the source domain itself when the toolstack vanishes, as libxl does on a
failed save, and carries on without a guest that vanished (its vCPUs stop).
"""

from migrate.actors.guest import GuestActor, scenario_digest, serve_guest
from migrate.actors.remote_guest import RemoteGuest
from migrate.actors.hypervisor import HypervisorActor, serve_hypervisor
from migrate.actors.toolstack import EventPublisher, RemoteDomain, RemoteSource
from migrate.actors.wiring import in_process_actors, remote_run, run_actor, watch

__all__ = ["RemoteSource", "RemoteDomain", "RemoteGuest", "GuestActor", "HypervisorActor", "serve_hypervisor",
           "serve_guest", "remote_run", "watch", "run_actor", "EventPublisher", "scenario_digest",
           "in_process_actors"]
