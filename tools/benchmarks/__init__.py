"""
The speed benchmark's parts, one module per measured thing; ``python -m tools.benchmark`` runs them.

- ``common``: the run's sizes, timing, peak memory, matmul rate, machine description, results table, JSON.
- ``authors``: the baseline, the authors' training step re-implemented for timing (not part of the package).
- ``ours``: this project's training step with its speed levers.
- ``disruption``, ``training`` (``train_step``, ``flops``, ``scaling``), ``pipeline``, ``inference``: the
  sections.
- ``run``: the command line (:py:func:`tools.benchmarks.run.main`): settings, the sections in order, the report.
"""
