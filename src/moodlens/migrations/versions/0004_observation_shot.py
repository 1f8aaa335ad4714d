"""observations.shot: the shot (between two cuts) each face was seen in.

* ``observations.shot`` (integer, not null, default 0): the index of the shot, counted
  from 0 at the video's start, that the sampled frame belongs to
  (:mod:`moodlens.shots`). Tracks never cross a cut, so a track's rows share one shot.
  Rows written before this revision get 0. A database made from the models (with the
  column) keeps it.
* ``complete_observations`` is recreated so that it shows the new column (PostgreSQL
  fixed the view's ``o.*`` when 0002 created it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEW = ("CREATE VIEW complete_observations AS "
        "SELECT o.*, a.video AS video FROM observations o JOIN analyses a ON a.id = o.analysis_id "
        "WHERE a.status = 'complete'")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS complete_observations")
    if "shot" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("observations")}:
        # (a database made from the models by create_all already has it)
        op.add_column("observations", sa.Column("shot", sa.Integer(), nullable=False, server_default="0"))
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW complete_observations")
    # Not batch mode: SQLite's table copy is not needed (>= 3.35 drops a column in place).
    op.drop_column("observations", "shot")
    op.execute(VIEW)
