"""The export's worker threads, one pool per role (``"read-ahead"``: a read's producer, the
gateway's next chunks; ``"encode"``: a file's compression and writes; ``"publish"``: a storage
batch's publishing while the next one is written, ``sync``), kept for the life of the process.

Why not a thread per hour: glibc gives each thread a malloc arena, and a thread that exits
leaves its arena to the next new thread, last out first in. With a reader and a writer started
for each hour, the next hour's reader took the arena the previous writer had shaped to its
buffers and the other way round; a Parquet export of three hours peaked 7 MB higher than one
(bench/README.md). A thread that outlives the hour keeps its arena for its own buffers: an
export of any number of hours peaks as one does.

Each pool reuses an idle thread before it starts another, so one sync at a time (a run, the
CLI) always meets the same thread per role; syncs side by side in one process get threads of
their own, up to ``MAX_WORKERS``, and never wait on each other's reads (a read holds its
producer's thread until it ends: a read beyond ``MAX_WORKERS`` at once waits for one).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

#: threads per role: more than a process runs syncs at once
MAX_WORKERS = 8


@functools.cache
def worker(role: str) -> ThreadPoolExecutor:
    """The process's pool for ``role``, started on first use."""
    return ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix=f"prism-{role}")


# A forked child has the pool but not its threads: it starts pools of its own.
os.register_at_fork(after_in_child=worker.cache_clear)
