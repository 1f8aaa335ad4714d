"""Live audiences: edge sessions, the batches they sent (for deduplication), embeddings.

* ``live_sessions``: one row per (device, session), the live analysis it fills, the
  server-side tracker's state after the last batch, and the agent's counters.
* ``live_batches``: (session, stream, seq) of every batch taken; a resent one is a
  duplicate and changes nothing.
* ``live_embeddings``: SFace embeddings of live faces when a session names a collection
  (never images); the tracks are named from them when the session closes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "live_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=True),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("collection", sa.String(255), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("faces", sa.Integer(), nullable=False),
        sa.Column("shot", sa.Integer(), nullable=True),
        sa.Column("tracker", sa.LargeBinary(), nullable=True),
        sa.Column("token_name", sa.String(255), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("last_batch_at", tz, nullable=True),
        sa.Column("last_captured_at", sa.Float(), nullable=True),
        sa.Column("closed_at", tz, nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "name", name="uq_live_sessions_device_name"),
    )
    op.create_index("ix_live_sessions_status", "live_sessions", ["status"])
    op.create_index("ix_live_sessions_analysis_id", "live_sessions", ["analysis_id"])
    op.create_table(
        "live_batches",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("faces", sa.Integer(), nullable=False),
        sa.Column("received_at", tz, nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["live_sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("session_id", "stream", "seq"),
    )
    op.create_table(
        "live_embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=False),
        sa.Column("track", sa.Integer(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_live_embeddings_analysis_id", "live_embeddings", ["analysis_id"])


def downgrade() -> None:
    op.drop_index("ix_live_embeddings_analysis_id", "live_embeddings")
    op.drop_table("live_embeddings")
    op.drop_table("live_batches")
    op.drop_index("ix_live_sessions_analysis_id", "live_sessions")
    op.drop_index("ix_live_sessions_status", "live_sessions")
    op.drop_table("live_sessions")
