"""The schema as it was before migrations: analyses, observations and the face collections.

Exactly what ``Base.metadata.create_all`` made (tests/data/schema_v0.sql): same columns,
types, indexes, and unnamed unique and foreign-key constraints (so PostgreSQL names them
as it did).

It also adopts a database that ``create_all`` made, which has no ``alembic_version``: a
table that is already there is kept as it is (checked to have moodlens's columns), and only
the missing ones are created. ``create_all`` made the collection tables lazily, at the first
enrolment, so many older databases hold only analyses and observations.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moodlens.errors import MoodlensError

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[tuple[str, list, list[tuple[str, list[str]]]]]:
    """(name, columns and constraints, indexes as (name, columns)) in creation order."""
    tz = sa.DateTime(timezone=True)
    return [
        ("analyses", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("video", sa.Text(), nullable=False),
            sa.Column("video_sha256", sa.String(64), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("params", sa.JSON(), nullable=False),
            sa.Column("models", sa.JSON(), nullable=False),
            sa.Column("video_info", sa.JSON(), nullable=False),
            sa.Column("timings", sa.JSON(), nullable=False),
            sa.Column("frames", sa.Integer(), nullable=False),
            sa.Column("observations", sa.Integer(), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("host", sa.String(255), nullable=True),
            sa.Column("pid", sa.Integer(), nullable=True),
            sa.Column("started_at", tz, nullable=False),
            sa.Column("finished_at", tz, nullable=True),
            sa.PrimaryKeyConstraint("id"),
        ], [("ix_analyses_status", ["status"])]),
        ("collections", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("created_at", tz, nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name"),
        ], []),
        ("observations", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("analysis_id", sa.Integer(), nullable=False),
            sa.Column("seq", sa.String(512), nullable=False),
            sa.Column("person", sa.String(255), nullable=False),
            sa.Column("frame", sa.Integer(), nullable=False),
            sa.Column("time_s", sa.Float(), nullable=False),
            sa.Column("track", sa.Integer(), nullable=False),
            *[sa.Column(n, sa.Float(), nullable=False) for n in (
                "x", "y", "w", "h", "score", "quality",
                "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")],
            sa.Column("landmarks", sa.JSON(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"], ondelete="CASCADE"),
        ], [("ix_observations_analysis_id", ["analysis_id"]), ("ix_observations_person", ["person"])]),
        ("persons", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("collection_id", sa.Integer(), nullable=False),
            sa.Column("person", sa.String(255), nullable=False),
            sa.Column("created_at", tz, nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("collection_id", "person"),
            sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        ], [("ix_persons_collection_id", ["collection_id"])]),
        ("face_embeddings", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("collection_id", sa.Integer(), nullable=False),
            sa.Column("person_id", sa.Integer(), nullable=False),
            sa.Column("model", sa.String(64), nullable=False),
            sa.Column("embedding", sa.LargeBinary(), nullable=False),
            sa.Column("image_sha256", sa.String(64), nullable=False),
            sa.Column("source_path", sa.Text(), nullable=False),
            sa.Column("quality", sa.Float(), nullable=False),
            sa.Column("face_jpeg", sa.LargeBinary(), nullable=True),
            sa.Column("created_at", tz, nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(["person_id"], ["persons.id"], ondelete="CASCADE"),
        ], [("ix_face_embeddings_person_id", ["person_id"]),
            ("ix_face_embeddings_image_sha256", ["image_sha256"]),
            ("ix_face_embeddings_collection_id", ["collection_id"])]),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, items, indexes in _tables():
        if inspector.has_table(name):  # adopting a database that create_all made
            have = {c["name"] for c in inspector.get_columns(name)}
            missing = [c.name for c in items if isinstance(c, sa.Column) and c.name not in have]
            if missing:
                raise MoodlensError(f"table {name} exists but is not moodlens's (no column {missing[0]}); "
                                    "use another database")
            continue
        op.create_table(name, *items)
        for index, columns in indexes:
            op.create_index(index, name, columns)


def downgrade() -> None:
    for name, _items, indexes in reversed(_tables()):
        for index, _columns in indexes:
            op.drop_index(index, table_name=name)
        op.drop_table(name)
