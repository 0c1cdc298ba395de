"""Shared fixtures."""

from tests.mqtt_broker import mqtt_broker  # noqa: F401  (a real Mosquitto per test)
