"""Work ahead in background threads while the caller consumes results in order."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor


def default_workers(limit: int = 4) -> int:
    """Decoding threads: ``min(limit, cpu_count)``."""
    return max(1, min(limit, os.cpu_count() or 1))


def ordered_map(fn, items, workers: int | None = None, ahead: int = 64):
    """Yield ``fn(item)`` for ``items`` in order, computing up to ``ahead`` of them in a
    thread pool (I/O and decoding overlap with the consumer).

    Close the generator (``contextlib.closing``) to stop the threads at once on an error.
    """
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                              thread_name_prefix="hiercell-load")
    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(1, ahead):
                break
        while pending:
            future = pending.popleft()
            for item in items:  # top up by one
                pending.append(pool.submit(fn, item))
                break
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def chunks(iterable, n: int):
    """Lists of ``n`` consecutive items (the last one may be shorter)."""
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
