"""Everything a person looks at: the terminal dashboard (``dashboard``), the GFN map
(``gfnmap``), plain progress lines (``progress``), plots (``plot``), the JSON and CSV
reports (``report``), and the interactive teaching app and its pieces.

- ``narration``: one plain-words caption per event that matters;
- ``playback``: the pacer the engine (or a replay) waits on: pause, step, speed, slow
  motion around the short moments a student must see;
- ``model``: the state a run's panels read, folded from the event stream only;
- ``panels``: small Textual widgets, each drawing one part of that state;
- ``app``: the Textual app that lays the panels out for the terminal's size and wires
  keys to the playback, for ``xmig run``, ``watch``, ``replay`` and ``compare``.
"""
