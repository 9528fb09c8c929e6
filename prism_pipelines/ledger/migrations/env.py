"""Alembic's environment for the state database: run by ledger/schema.py, on the connection
(and inside the transaction) it passes in ``config.attributes["connection"]``."""

from alembic import context

from prism_pipelines.ledger.schema import VERSION_TABLE
from prism_pipelines.ledger.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: a later revision's op.batch_alter_table does that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
