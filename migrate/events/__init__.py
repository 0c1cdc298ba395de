"""The run's event stream: the event types (``types``), the event log on disk (``log``)
and the story of one page (``track``). Every consumer (report, app, progress lines,
``watch``, ``explain``) reads the same events."""

from migrate.events.types import *  # noqa: F401,F403
from migrate.events.types import __all__  # noqa: F401
