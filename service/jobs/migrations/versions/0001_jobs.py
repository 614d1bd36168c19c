"""Job records: jobs, their event log, uploaded dataset files (the schema before Alembic, "version 1").

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Before Alembic the tables were made by SQLAlchemy's `create_all` and marked by one row in
`schema_version` (version 1). Such a database is taken over here: its tables are exactly these, so
only the missing ones are created (as `create_all` did), and the old marker is dropped. A marker of
any other version was never written by a MoMo that could be upgraded, and is refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.jobs.database import SchemaMismatch

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

OLD_MARKER = "schema_version"  # the pre-Alembic version row (id 1)


def _adopt_old_marker(bind: sa.Connection) -> None:
    version = bind.execute(sa.text(f"SELECT version FROM {OLD_MARKER} WHERE id = 1")).scalar()
    if version not in (None, 1):
        raise SchemaMismatch(
            f"the job database has the pre-Alembic schema version {version}, which no MoMo release "
            "wrote; point MOMO_DATABASE_URL at a new database (or move the old one away)"
        )
    op.drop_table(OLD_MARKER)


def _create_jobs() -> None:
    op.create_table(
        "fine_tune_jobs",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("dataset", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("result_model", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_fine_tune_jobs_id", "fine_tune_jobs", ["id"], unique=True)
    op.create_index("ix_fine_tune_jobs_finished_at", "fine_tune_jobs", ["finished_at"])
    op.create_index("ix_fine_tune_jobs_state", "fine_tune_jobs", ["state"])


def _create_files() -> None:
    op.create_table(
        "uploaded_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def _create_events() -> None:
    op.create_table(
        "fine_tune_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("fine_tune_jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
    )
    op.create_index("ix_fine_tune_events_job_id", "fine_tune_events", ["job_id"])


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    if OLD_MARKER in existing and "fine_tune_jobs" in existing:
        _adopt_old_marker(bind)
    # in create_all's order (the events reference the jobs); a table the old code made is kept as it is
    for table, create in (
        ("fine_tune_jobs", _create_jobs),
        ("uploaded_files", _create_files),
        ("fine_tune_events", _create_events),
    ):
        if table not in existing:
            create()


def downgrade() -> None:
    for table in ("fine_tune_events", "uploaded_files", "fine_tune_jobs"):
        op.drop_table(table)
