"""kpbench's messages (notes, warnings, errors) go through Python logging, logger ``kpbench``, to
stderr: through rich's handler on a terminal, as plain lines in a pipe or a log file (so that
they are not wrapped or padded). ``-q`` shows warnings and errors only and hides progress bars;
``-v`` adds debug notes. Results (tables, JSON) go to stdout, whatever the level."""

from __future__ import annotations

import logging
import sys

from rich.console import Console

log = logging.getLogger("kpbench")


def setup(verbosity: int = 0) -> None:
    """Route kpbench's logger to stderr at the level ``verbosity`` asks: -1 (``-q``) warnings,
    0 notes, 1 (``-v``) debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False,
                                               markup=False, rich_tracebacks=False)
    else:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class _Stderr(logging.StreamHandler):
    """Plain lines to whatever ``sys.stderr`` is when a message is logged (a test may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def status_console() -> Console:
    """The stderr console of progress bars: silent where notes are (``-q``)."""
    return Console(stderr=True, quiet=not log.isEnabledFor(logging.INFO))


if not log.handlers:  # kpbench used as a library: notes on stderr, as the CLI shows them
    setup(0)


def progress_bar(console, transient: bool = True):
    """kpbench's progress bar (data preparation, calibration, training): description, bar,
    n/total, time; ``transient``: gone when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=transient)
