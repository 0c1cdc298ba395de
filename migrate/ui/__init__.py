"""Everything a person looks at: the GFN map (``gfnmap``), plain progress lines and the
end-of-run summary (``progress``), plots (``plot``), and the interactive teaching app
and its pieces. The run's state they read is the one fold of its events
(``migrate/events/fold.py``); the JSON and CSV reports are ``migrate/run/report.py``'s.

- ``narration``: one plain-words caption per event that matters;
- ``playback``: the pacer the engine (or a replay) waits on: pause, step, speed, slow
  motion around the short moments a student must see, and the play/pause/step table;
- ``model``: the state a run's panels read, folded from the event stream only;
- ``panels``: small Textual widgets, each drawing one part of that state, with its CSS;
- ``screens``: one screen per mode (run, watch, replay, compare) laying the panels out
  for the terminal's size, and the help;
- ``app``: the Textual app that folds the events, posts the redraws and wires keys to
  the playback, for ``xmig run``, ``watch``, ``replay`` and ``compare``.
"""
