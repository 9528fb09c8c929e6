"""What an hour's manifest (``_manifest.json``, storage types) needs from the ledger, so a run
that writes it later than the batches knows every file: each batch's file sha256 and its rows'
first and last event times; and, per partition, when its manifest was last written, to tell a
current manifest from one that late rows made stale.

Batches recorded before this revision have none: an hour that has one gets its manifest only
after a full re-delivery (docs/storage.md).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prism_batches") as batch:
        batch.add_column(sa.Column("sha256", sa.Text, nullable=True))
        batch.add_column(sa.Column("first_event", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_event", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("prism_partitions") as partition:
        partition.add_column(sa.Column("manifest_at", sa.DateTime(timezone=True), nullable=True))
