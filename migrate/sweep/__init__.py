"""Sweeps: parameter studies of many migrations (``xmig sweep``).

- ``spec``: sweep files (base scenario, axes, zip groups), validated and expanded into
  points, each checked through ``migrate.run.scenario``'s rules;
- ``worker``: one point run by the same in-process runner as ``xmig run``;
- ``engines``: local worker processes, or a Dask distributed cluster;
- ``session``: a sweep from start to finish (part file, resume, canonical results);
- ``results``: the row's columns and the Parquet / CSV files;
- ``stats``: an outcome grouped by an axis, as a table or a plot.
"""
