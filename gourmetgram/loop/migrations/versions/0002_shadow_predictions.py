"""shadow_predictions: a shadow revision's answers to mirrored requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 05:35:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('shadow_predictions',
    sa.Column('sample_id', sa.String(length=160), nullable=False),
    sa.Column('revision', sa.String(length=128), nullable=False),
    sa.Column('inference_id', sa.String(length=128), nullable=False),
    sa.Column('instance', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.Column('class_index', sa.Integer(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('top_k', sa.JSON(), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('predicted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sample_id', 'revision')
    )
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_predictions_captured_at'), ['captured_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_predictions_inference_id'), ['inference_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_predictions_inference_id'))
        batch_op.drop_index(batch_op.f('ix_shadow_predictions_captured_at'))
    op.drop_table('shadow_predictions')
