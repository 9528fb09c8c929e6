"""The state tables as they were before the schema was versioned (created with create_all).

A database made then has these tables already (``prism_notifications`` only once a failure was
notified), so this revision creates only those missing: it adopts such a database as it is,
every batch and cursor kept.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())

    def create(name: str, *columns, index: str | None = None) -> None:
        if name in existing:
            return
        op.create_table(name, *columns)
        if index:
            op.create_index(f"ix_{name}_{index}", name, [index])

    create(
        "prism_batches",
        sa.Column("integration", sa.String(64), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("after_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("through_id", sa.BigInteger, nullable=True),
        sa.Column("location", sa.Text, nullable=True),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("rejects", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    create(
        "prism_partitions",
        sa.Column("integration", sa.String(64), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
    )
    create(
        "prism_rejects",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("integration", sa.String(64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_id", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=True),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        index="integration",
    )
    create(
        "prism_leases",
        sa.Column("integration", sa.String(64), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    create(
        "prism_integrations",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("first_configured_at", sa.DateTime(timezone=True), nullable=False),
    )
    create(
        "prism_notifications",
        sa.Column("integration", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("error_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_runs", sa.Integer, nullable=False),
    )
