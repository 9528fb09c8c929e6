"""What every sink is: validate, deliver a batch, describe what it delivered.

Sinks know nothing of the ledger or of Dagster. ``deliver`` (a sink that sends as it reads) or
``publish`` (one that ``stage``s the batch first: storage) returns only when the destination
has acknowledged every record of the batch that it did not reject for good; otherwise it
raises (``CredentialsError`` for refused credentials, ``DestinationError`` for the rest), and
the batch stays open in the ledger, to be redone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from prism_pipelines.batch import CHUNK_ROWS, Batch
from prism_pipelines.records import Reject
from prism_pipelines.sinks.retry import RetryCount


@dataclass
class Delivery:
    """What a sink did with one batch, for the ledger and the run's metadata."""

    records: int = 0
    bytes: int = 0
    requests: int = 0
    #: how much ``Sink.retries`` grew while the batch was delivered
    retries: int = 0
    location: str | None = None
    #: the destination's version of what it stored at ``location`` (storage: ETag, generation)
    published_version: str | None = None
    #: sha256 of the file stored at ``location`` (storage), hex
    sha256: str | None = None
    #: records the destination refused for good, each with the destination's reason
    rejects: list[Reject] = field(default_factory=list)
    #: sink-specific counters (summed over a run into the metadata)
    counters: dict[str, int] = field(default_factory=dict)
    #: what the destination refused for good that is no record of the batch (Datadog's metric
    #: points), as a count per reason, for the run's metadata
    refused: Counter = field(default_factory=Counter)


class Sink(ABC):
    #: rows a chunk holds for this sink (a storage sink's: its format's, ``Format.chunk_rows``)
    chunk_rows: int = CHUNK_ROWS

    def __init__(self, integration):
        self.integration = integration
        #: every retry made for this sink, by ``RetryLogic`` or by its SDK (see retry.py)
        self.retries = RetryCount()

    @abstractmethod
    def validate(self) -> str:
        """Prove the credentials and the destination work (the spec's "Validate & Continue").
        Returns what was checked; raises with a message that says what to fix."""

    def location_for(self, batch: Batch) -> str | None:
        """Where the batch will land, recorded before it is sent (storage: its object key)."""
        return None

    def published_version(self, location: str) -> str | None:
        """The destination's version of what ``location`` holds now (None: nothing, or a sink
        without files): what a redo of a batch that recorded none may replace."""
        return None

    def clean_up(self, partition: datetime, stale_after: float) -> None:  # noqa: B027
        """Remove what crashed runs left behind for the partition (temporary files, unfinished
        uploads) older than ``stale_after`` seconds (the lease: no live run owns them); called
        under the partition's lease, before anything is delivered. Optional hook."""

    def stage(self, batch: Batch) -> object | None:
        """Read the batch and prepare it where the destination shows nothing yet (storage: its
        file, ``StorageSink.stage``), for ``publish`` to make visible once the ledger has opened
        the batch: the sync reads the next batch meanwhile. None (the default): the sink sends
        as it reads, in ``deliver``, and nothing was read."""
        return None

    def publish(self, batch: Batch, staged: object) -> Delivery:
        """Make what ``stage`` prepared visible at the destination (a sink that stages)."""
        raise NotImplementedError

    def deliver(self, batch: Batch) -> Delivery:
        """Send every chunk of the batch and wait for the destination's acknowledgement (a sink
        that does not stage)."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook, most sinks hold nothing to release
        """Release clients; called once at the end of a run."""
