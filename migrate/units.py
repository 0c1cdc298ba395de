"""Units as people write them in scenario files: sizes (``512MiB``), rates (``20MiB/s``),
bandwidths (``1Gbit/s``) and durations (``250ms``), as plain parsers and as pydantic
annotated types.

The implementation is ``guest.units`` (the guest's config needs it, and ``guest`` may
not import ``migrate``); this is the name the toolstack and the CLI use.
"""

from guest.units import *  # noqa: F401,F403
from guest.units import __all__  # noqa: F401
