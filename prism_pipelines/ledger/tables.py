"""Every table of the state database, as the newest migration leaves it.

The migrations (``migrations/versions``) are what create and change these tables; this module
is what the code reads and writes them with, so a change here comes with a new revision.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text

metadata = MetaData()

batches = Table(
    "prism_batches",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("after_id", BigInteger, primary_key=True, autoincrement=False),
    Column("through_id", BigInteger, nullable=True),
    Column("location", Text, nullable=True),
    #: the destination's version of the file the batch published (revision 0002)
    Column("published_version", Text, nullable=True),
    Column("records", Integer, nullable=False, default=0),
    Column("rejects", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    #: the file's sha256 and its rows' event time span, for the hour's manifest (revision 0003)
    Column("sha256", Text, nullable=True),
    Column("first_event", DateTime(timezone=True), nullable=True),
    Column("last_event", DateTime(timezone=True), nullable=True),
)

partitions = Table(
    "prism_partitions",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("last_sync_at", DateTime(timezone=True), nullable=True),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", DateTime(timezone=True), nullable=True),
    #: when the hour's manifest was last written, by the state database's clock (revision
    #: 0003; storage with ``manifest``)
    Column("manifest_at", DateTime(timezone=True), nullable=True),
    #: the destination's version of that manifest: what its next write may replace (0004)
    Column("manifest_version", Text, nullable=True),
)

rejects = Table(
    "prism_rejects",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("integration", String(64), nullable=False, index=True),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("source_id", BigInteger, nullable=False),
    Column("request_id", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("record", Text, nullable=True),
    Column("rejected_at", DateTime(timezone=True), nullable=False),
)

leases = Table(
    "prism_leases",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

integrations = Table(
    "prism_integrations",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("first_configured_at", DateTime(timezone=True), nullable=False),
)

#: What the failure notifications told, per integration (notifications.py).
notified = Table(
    "prism_notifications",
    metadata,
    Column("integration", String(64), primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("error_since", DateTime(timezone=True), nullable=False),
    Column("notified_at", DateTime(timezone=True), nullable=False),
    Column("reminded_at", DateTime(timezone=True), nullable=True),
    Column("failed_runs", Integer, nullable=False, default=1),
)
