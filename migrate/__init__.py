"""The xmig toolstack: precopy engine, stream v2, restore, transports, the app and CLI."""
