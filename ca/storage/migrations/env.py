"""Alembic environment shared by the core and every front end's migration set.

The caller (Database.upgrade) passes the engine, the metadata and the version table; nothing is
read from a URL in a file.
"""

from alembic import context

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=config.attributes["metadata"],
        render_as_batch=connection.dialect.name == "sqlite",
        version_table=config.attributes["version_table"],
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
