"""Closing the loop: production captures, user feedback, the labelling queue, labelled exports.

Storage is real on both runtimes: images through fsspec (a local folder or S3/MinIO,
:mod:`.objects`), metadata through SQLAlchemy with alembic migrations (SQLite locally,
PostgreSQL on the cluster, :mod:`.store`).
"""
