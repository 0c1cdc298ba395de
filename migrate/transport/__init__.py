"""How the actors reach each other: one small RPC and event interface
(``base.Transport``) with its in-process implementation, the MQTT one (``mqtt``), the
wire codec every message passes through (``wire``) and the run key that seals MQTT
messages (``runkey``). Adding a transport is one module here: the actors
(``migrate.actors``) only see ``Transport``."""
