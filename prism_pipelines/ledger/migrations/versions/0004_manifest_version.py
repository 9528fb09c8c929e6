"""The destination's version of the hour's manifest as last written (S3 ETag, GCS generation,
Azure ETag, the local file's identity), so the next write of it is conditional on exactly that
version and a run that lost its partition cannot replace a newer run's manifest (fencing,
manifest.py).

Partitions whose manifest was written before this revision have none: its next write finds the
manifest there and replaces it under the partition's lease.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prism_partitions") as partition:
        partition.add_column(sa.Column("manifest_version", sa.Text, nullable=True))
