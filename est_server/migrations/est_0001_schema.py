"""est schema: Basic credentials and requests held for manual approval

Revision ID: est_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "est_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "est_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "est_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_key", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sans", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("certificate_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'approved', 'rejected', 'issued')",
            name="ck_est_requests_status",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("est_requests", schema=None) as batch_op:
        batch_op.create_index("ix_est_requests_key", ["request_key"], unique=False)
        batch_op.create_index("ix_est_requests_status", ["status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("est_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_est_requests_status")
        batch_op.drop_index("ix_est_requests_key")
    op.drop_table("est_requests")
    op.drop_table("est_users")
