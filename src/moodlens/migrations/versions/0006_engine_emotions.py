"""observations.confused and .unknown; every emotion column nullable (emotion engines).

* ``observations.confused``, ``observations.unknown`` (float, nullable): Rekognition's
  CONFUSED and UNKNOWN, the seed's report columns that no open model predicts. NULL in
  rows of the own model.
* The eight FER+ columns become nullable: an engine leaves NULL what it does not predict
  (Rekognition has no contempt) or a face it could not score, rather than a made-up 0.
  SQLite cannot change a column's nullability in place, so there the table is copied
  (Alembic's batch mode, rows and indexes kept); PostgreSQL alters the columns.
* ``complete_observations`` is dropped first (SQLite's copy renames the table under it)
  and recreated after, to show the new columns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FER = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
NEW = ("confused", "unknown")
VIEW = ("CREATE VIEW complete_observations AS "
        "SELECT o.*, a.video AS video FROM observations o JOIN analyses a ON a.id = o.analysis_id "
        "WHERE a.status = 'complete'")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS complete_observations")
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("observations")}
    with op.batch_alter_table("observations") as batch:
        for name in NEW:
            if name not in have:  # (a database made from the models by create_all already has them)
                batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        for name in FER:
            batch.alter_column(name, existing_type=sa.Float(), nullable=True)
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW complete_observations")
    bind = op.get_bind()
    # rows an engine left empty get 0, the only value the older schema can hold
    for name in FER:
        bind.execute(sa.text(f"UPDATE observations SET {name} = 0 WHERE {name} IS NULL"))
    with op.batch_alter_table("observations") as batch:
        for name in FER:
            batch.alter_column(name, existing_type=sa.Float(), nullable=False)
        for name in NEW:
            batch.drop_column(name)
    op.execute(VIEW)
