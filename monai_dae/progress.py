"""
When to show progress bars: the one rule of the bundles and the tools.

A step that takes more than a few seconds (data checks, dataset caching, sliding-window inference, a data-list
scan, an export, the benchmark sections, the training epochs) shows a tqdm bar on stderr, unless the user said
``--progress_bar false`` (bundles) / ``--progress false`` (tools), or stderr is not a terminal (a log file, a
pipe, CI): there a bar would only add carriage-return noise.

Free of torch and MONAI imports so that the data tools start fast; :py:mod:`monai_dae.utils` re-exports it.
"""

from __future__ import annotations

import sys

__all__ = ["progress_enabled"]


def progress_enabled(progress: bool | None = None) -> bool:
    """
    Whether to show progress bars.

    Args:
        progress: an explicit choice (True: always, even into a file; False: never); None: only when stderr is
            a terminal. Bundle configs pass ``@progress_bar and monai_dae.utils.progress_enabled()`` (their
            ``show_progress`` key): ``--progress_bar false`` silences every bar, true shows them on a terminal.

    Returns:
        True to show the bars.
    """
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
