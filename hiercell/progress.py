"""A progress bar on stderr for long jobs (click's, with a ``update(n)`` method)."""

from __future__ import annotations

import contextlib
import sys

import click


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool = True):
    """Context manager yielding an object with ``update(n)``; draws on stderr.

    Shows nothing when ``enabled`` is false; on a non-terminal stderr click
    prints the label once and the final state, which keeps logs short.
    """
    if not enabled:
        yield _Silent()
        return
    with click.progressbar(length=max(total, 0), label=label, file=sys.stderr,
                           show_eta=True, show_pos=True) as bar:
        yield bar


class _Silent:
    def update(self, n):  # noqa: D401 - same signature as click's bar
        """Do nothing."""
