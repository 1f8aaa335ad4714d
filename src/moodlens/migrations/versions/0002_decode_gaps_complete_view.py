"""analyses.decode_gaps, the view complete_observations, and an index for time-ordered reads.

* ``analyses.decode_gaps`` (JSON, nullable): stretches of the video that could not be
  decoded and were skipped, ``[{"start_s", "end_s", "packets"}, ...]``. A database made by
  the development code between the column and this revision already has it: kept.
* ``complete_observations``: the rows of complete analyses only, with the video's name.
  The rows of a killed or failed analysis stay in ``observations`` (they are what was
  seen before it stopped); queries for results should read this view.
* ``ix_observations_analysis_time`` on ``observations (analysis_id, time_s, track)``:
  exports and reports stream an analysis's rows in time order; with the index the
  database walks it instead of sorting every row first.

PostgreSQL fixes a view's ``o.*`` when the view is created: a later revision that adds a
column to ``observations`` must recreate the view to show it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEW = ("CREATE VIEW complete_observations AS "
        "SELECT o.*, a.video AS video FROM observations o JOIN analyses a ON a.id = o.analysis_id "
        "WHERE a.status = 'complete'")


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("analyses")}
    if "decode_gaps" not in columns:
        op.add_column("analyses", sa.Column("decode_gaps", sa.JSON(), nullable=True))
    op.execute(VIEW)
    if "ix_observations_analysis_time" not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("observations")}:
        op.create_index("ix_observations_analysis_time", "observations", ["analysis_id", "time_s", "track"])


def downgrade() -> None:
    op.drop_index("ix_observations_analysis_time", "observations")
    op.execute("DROP VIEW complete_observations")
    # Not batch mode: SQLite's table copy would drop analyses, and with it (ON DELETE
    # CASCADE) every observation. SQLite >= 3.35 drops a column in place.
    op.drop_column("analyses", "decode_gaps")
