"""acme schema: accounts, orders, authorizations, challenges, nonces, EAB keys, rate limits, ARI

Revision ID: acme_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "acme_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("directory", sa.String(length=64), nullable=False),
        sa.Column("key_thumbprint", sa.String(length=64), nullable=False),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("terms_agreed", sa.Boolean(), nullable=False),
        sa.Column("eab_key_id", sa.String(length=128), nullable=True),
        sa.Column("owner", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_ip", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "status in ('valid', 'deactivated', 'revoked')", name="ck_acme_accounts_status"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("directory", "key_thumbprint", name="uq_acme_accounts_key"),
        sa.UniqueConstraint("public_id"),
    )
    op.create_table(
        "acme_rate_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("limit_name", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("acme_rate_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_acme_rate_events_lookup", ["limit_name", "key", "at"], unique=False
        )

    op.create_table(
        "acme_renewal_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer_id", sa.Integer(), nullable=True),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("issued_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("explanation_url", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("acme_renewal_overrides", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acme_renewal_overrides_serial"), ["serial"], unique=False
        )

    op.create_table(
        "acme_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "acme_used_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    with op.batch_alter_table("acme_used_nonces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acme_used_nonces_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("identifier_type", sa.String(length=8), nullable=False),
        sa.Column("identifier_value", sa.String(length=256), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status in ('pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked')",
            name="ck_acme_authorizations_status",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["acme_accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("acme_authorizations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_acme_authorizations_reuse",
            ["account_id", "identifier_type", "identifier_value", "status"],
            unique=False,
        )

    op.create_table(
        "acme_eab_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("hmac_key", sa.LargeBinary(), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("directory", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["acme_accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_id"),
    )
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaces", sa.String(length=256), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "certificate_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status in ('pending', 'ready', 'processing', 'valid', 'invalid')",
            name="ck_acme_orders_status",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["acme_accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("acme_orders", schema=None) as batch_op:
        batch_op.create_index("ix_acme_orders_account", ["account_id", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_acme_orders_certificate_id"), ["certificate_id"], unique=False
        )
        batch_op.create_index("ix_acme_orders_replaces", ["replaces"], unique=False)

    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column(
            "authorization_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'processing', 'valid', 'invalid')",
            name="ck_acme_challenges_status",
        ),
        sa.ForeignKeyConstraint(
            ["authorization_id"],
            ["acme_authorizations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("acme_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acme_challenges_authorization_id"), ["authorization_id"], unique=False
        )

    op.create_table(
        "acme_order_authorizations",
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "authorization_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["authorization_id"],
            ["acme_authorizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["acme_orders.id"],
        ),
        sa.PrimaryKeyConstraint("order_id", "authorization_id"),
    )
    with op.batch_alter_table("acme_order_authorizations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acme_order_authorizations_authorization_id"),
            ["authorization_id"],
            unique=False,
        )


def downgrade() -> None:
    op.drop_table("acme_order_authorizations")
    op.drop_table("acme_challenges")
    op.drop_table("acme_eab_keys")
    op.drop_table("acme_authorizations")
    op.drop_table("acme_orders")
    op.drop_table("acme_used_nonces")
    op.drop_table("acme_secrets")
    op.drop_table("acme_renewal_overrides")
    op.drop_table("acme_rate_events")
    op.drop_table("acme_accounts")
