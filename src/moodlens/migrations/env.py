"""Alembic's environment for moodlens: migrate the connection that Store hands over.

:func:`moodlens.migrations.ensure_schema` passes an open connection, already inside the
transaction that holds the migration lock; the revisions run in it and the caller commits.
Used by hand (``alembic.command`` with :func:`moodlens.migrations.config` and no connection),
it opens ``sqlalchemy.url`` from the config and compares against the models for autogenerate.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

cfg = context.config
connection = cfg.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
else:
    import moodlens.collections  # noqa: F401  - registers the collection tables on Base
    import moodlens.service.tables  # noqa: F401  - and the service's
    from moodlens.store import Base

    url = cfg.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = create_engine(url)
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=Base.metadata)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
