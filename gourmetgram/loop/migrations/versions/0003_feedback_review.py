"""feedback.client (who sent it, for the daily correction cap) and the annotator's review of a
user's correction that contradicts a confident prediction (labels.review, reviewed_by, reviewed_at)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 14:10:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_feedback_client'), ['client'], unique=False)
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('reviewed_by', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_labels_review'), ['review'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labels_review'))
        batch_op.drop_column('reviewed_at')
        batch_op.drop_column('reviewed_by')
        batch_op.drop_column('review')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_client'))
        batch_op.drop_column('client')
