"""Alembic environment: runs migrations on the engine the caller passes (never from a URL in a file)."""

from alembic import context

from ca.storage.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        version_table="privca_core_version",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
