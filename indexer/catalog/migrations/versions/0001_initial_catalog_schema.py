"""Initial catalog schema: cases, diagnoses, images (with their embedding), image_embeddings, ingest failures.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 04:02:19.837162
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_key", sa.String(length=256), nullable=False),
        sa.Column("patient_ref", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_key"),
    )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cases_patient_ref"), ["patient_ref"], unique=False)

    op.create_table(
        "ingest_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ingest_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ingest_failures_sha256"), ["sha256"], unique=False)

    op.create_table(
        "diagnoses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "label"),
    )
    with op.batch_alter_table("diagnoses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_diagnoses_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_diagnoses_label"), ["label"], unique=False)

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("pixel_digest", sa.String(length=64), nullable=True),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("modality", sa.String(length=32), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("study_description", sa.Text(), nullable=True),
        sa.Column("series_description", sa.Text(), nullable=True),
        sa.Column("view_position", sa.String(length=32), nullable=True),
        sa.Column("laterality", sa.String(length=8), nullable=True),
        sa.Column("pixel_spacing_row", sa.Double(), nullable=True),
        sa.Column("pixel_spacing_column", sa.Double(), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("sop_class_uid", sa.String(length=128), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("window_center", sa.Double(), nullable=True),
        sa.Column("window_width", sa.Double(), nullable=True),
        sa.Column("thumbnail_path", sa.Text(), nullable=True),
        sa.Column("encoder", sa.String(length=128), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "frame_index", name="uq_images_sha256_frame"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_case_id"), ["case_id"], unique=False)
        batch_op.create_index("ix_images_encoder_modality", ["encoder", "modality"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_pixel_digest"), ["pixel_digest"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_sha256"), ["sha256"], unique=False)
        batch_op.create_index("ix_images_sop_frame", ["sop_instance_uid", "frame_index"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_images_study_instance_uid"), ["study_instance_uid"], unique=False
        )

    op.create_table(
        "image_embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("encoder", sa.String(length=128), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "encoder", name="uq_image_embeddings_image_encoder"),
    )
    with op.batch_alter_table("image_embeddings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_embeddings_encoder"), ["encoder"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_embeddings_image_id"), ["image_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("image_embeddings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_embeddings_image_id"))
        batch_op.drop_index(batch_op.f("ix_image_embeddings_encoder"))

    op.drop_table("image_embeddings")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_study_instance_uid"))
        batch_op.drop_index("ix_images_sop_frame")
        batch_op.drop_index(batch_op.f("ix_images_sha256"))
        batch_op.drop_index(batch_op.f("ix_images_pixel_digest"))
        batch_op.drop_index("ix_images_encoder_modality")
        batch_op.drop_index(batch_op.f("ix_images_case_id"))

    op.drop_table("images")
    with op.batch_alter_table("diagnoses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_diagnoses_label"))
        batch_op.drop_index(batch_op.f("ix_diagnoses_case_id"))

    op.drop_table("diagnoses")
    with op.batch_alter_table("ingest_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ingest_failures_sha256"))

    op.drop_table("ingest_failures")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cases_patient_ref"))

    op.drop_table("cases")
