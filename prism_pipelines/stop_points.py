"""A test seam, and the only one: ``PRISM_STOP_AT=<point>`` makes the process stop itself
(SIGSTOP) the first time it reaches the named point, so the fault suite can stall a run, or kill
it, exactly there rather than at a moment left to chance (docs/reliability.md, "Stop points").
Unset, as in production, a point costs one dictionary look-up.

The points:

- ``open_batch``: a batch's file is staged (read, written, not visible), the batch not yet
  opened in the ledger (sync.py): a run stalled here finds its lease taken when it wakes;
- ``publish_file``: a batch's file is staged and its version to replace decided (fencing), the
  conditional write not sent yet; for a redo whose rows are all gone, that write is the one
  that empties the file (sinks/storage/base.py);
- ``publish_manifest``: the hour's manifest is built from the ledger, under the lease, the
  conditional write not sent yet (manifest.py);
- ``lease_renewed``: a ledger transaction has renewed the lease (its row locked) and not yet
  committed (ledger/lease.py): a run stalled here must not hold the partition past its lease.
"""

from __future__ import annotations

import os
import signal

_stopped: set[str] = set()


def stop_point(point: str) -> None:
    """Stop the process here (once) if ``PRISM_STOP_AT`` names ``point``; SIGCONT resumes it."""
    if os.environ.get("PRISM_STOP_AT") == point and point not in _stopped:
        _stopped.add(point)
        os.kill(os.getpid(), signal.SIGSTOP)
