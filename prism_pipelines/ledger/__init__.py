"""The delivery state: tables (tables.py), their Alembic migrations (schema.py, migrations/),
the lease that keeps a partition to one run (lease.py), and the Ledger that reads and writes
batches, cursors, rejects and errors (state.py)."""

from prism_pipelines.ledger.lease import (
    LEASE_SECONDS,
    Lease,
    LeaseError,
    LeaseLost,
    PartitionBusy,
    lease_seconds,
)
from prism_pipelines.ledger.schema import HEAD, StateDatabaseError, upgrade
from prism_pipelines.ledger.state import Ledger, PartitionState, RecordedBatch
from prism_pipelines.ledger.tables import (
    batches,
    integrations,
    leases,
    metadata,
    notified,
    partitions,
    rejects,
)

__all__ = [
    "HEAD",
    "LEASE_SECONDS",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "Ledger",
    "PartitionBusy",
    "PartitionState",
    "RecordedBatch",
    "StateDatabaseError",
    "batches",
    "integrations",
    "lease_seconds",
    "leases",
    "metadata",
    "notified",
    "partitions",
    "rejects",
    "upgrade",
]
