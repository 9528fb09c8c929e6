"""What each batch published: the destination's version of its file (S3 ETag, GCS generation,
Azure ETag, the local file's identity), so a redo replaces exactly that file and a run that lost
its partition cannot replace a newer one (fencing, sinks/storage/base.py).

Batches recorded before this revision have none: a redo of one takes the version it finds at
the destination, under the partition's lease.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prism_batches") as batch:
        batch.add_column(sa.Column("published_version", sa.Text, nullable=True))
