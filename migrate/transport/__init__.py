"""How the actors reach each other: one small RPC and event interface
(``base.Transport``) with its in-process implementation, and the MQTT one (``mqtt``:
where the broker is, ``connection``; which messages belong to the run now,
``admission``, over the run key that seals them, ``runkey``; the serving side of its
RPC, ``requests``). Every message passes through the wire codec (``migrate.codec``).
Adding a transport is one module here: the actors (``migrate.actors``) only see
``Transport``."""
