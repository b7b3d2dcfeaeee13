"""samples.ood_score, samples.in_distribution: the answer's out-of-distribution score and flag

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 14:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('in_distribution', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_column('in_distribution')
        batch_op.drop_column('ood_score')
