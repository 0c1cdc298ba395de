"""The run's event stream: the event types (``types``), the event log on disk (``log``)
and the checks a recorded event must pass (``validate``), the story of one page
(``track``), and the one fold of events into run state (``fold``). Every consumer
(report, app, progress lines, ``watch``, ``explain``) reads the same events."""

from migrate.events.types import *  # noqa: F401,F403
from migrate.events.types import __all__  # noqa: F401
