"""The xmig toolstack: precopy engine, stream v2, restore, transports, dashboard and CLI."""
