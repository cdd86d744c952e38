"""The one progress convention of hiercell.

Every long-running library function takes ``progress``:

* ``None`` or ``False``: silent;
* ``True``: a click progress bar on stderr (what the command line passes);
* a callable ``progress(done, total)``: called after each step with the
  number of items done so far and the total.

Inside, :func:`tracker` turns that into a single ``update(n)`` function.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def tracker(progress, total: int, label: str = ""):
    """Context manager yielding ``update(n)`` (``n`` more items done) for ``progress``."""
    total = max(int(total), 0)
    if callable(progress):
        done = [0]

        def update(n):
            done[0] += n
            progress(done[0], total)

        yield update
        return
    if not progress:
        yield lambda n: None
        return
    import click

    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                           show_pos=True) as bar:
        yield bar.update
