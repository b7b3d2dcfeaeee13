"""The loop's metadata store: SQLAlchemy engine + alembic migrations + the writes capture needs.

One class, :class:`Store`, opened from a SQLAlchemy URL (``sqlite:///...`` locally,
``postgresql+psycopg2://...`` on the cluster). Opening migrates the schema to head, so a
fresh database and an old one end up the same. Writes are idempotent on the sample id:
a redelivered event updates nothing it already has.

Durability: SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives the process being killed (kill -9); ``synchronous=FULL`` (``GOURMETGRAM_LOOP_DB_SYNC=FULL``)
also survives power loss, at a cost per commit.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, overload

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gourmetgram.environment import environment
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.loop.models import Base, Feedback, Label, Sample, ShadowPrediction

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(engine: Engine) -> None:
    sync = (environment().loop_db_sync or "NORMAL").upper()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={'FULL' if sync == 'FULL' else 'NORMAL'}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


class Store:
    """Engine, sessions and the schema version of one loop database."""

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(url, future=True, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - a bad URL is the user's to fix
            raise BadInput(f"cannot open the loop database {url!r}: {exc}") from exc
        self.safe_url = self.engine.url.render_as_string(hide_password=True)  # for messages and logs
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            _sqlite_pragmas(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)
        # SQLite has one writer: serialise writes in-process instead of spinning on SQLITE_BUSY.
        self.write_lock = threading.Lock() if self.is_sqlite else _NullLock()
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        from alembic import command
        from sqlalchemy.exc import OperationalError

        cfg = alembic_config()
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:  # the server is down or refuses us; the file cannot be opened
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise DependencyUnavailable(f"the loop database at {self.safe_url} is not available ({reason}); "
                                        "start it, or point GOURMETGRAM_LOOP_DB (--db) at one that "
                                        "answers") from None

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits on exit (rolls back on error), one writer at a time."""
        with self.write_lock, self.sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()

    # -- capture writes ---------------------------------------------------------------------
    def upsert_sample(self, sample_id: str, **fields) -> bool:
        """Create the sample or fill in the fields it does not have yet; True if anything changed.

        Idempotent: a field already set is never overwritten, so a redelivered event (same
        id, same content) changes nothing and is reported as a duplicate (False).
        """
        for attempt in (1, 2):
            try:
                with self.write() as s:
                    row = s.get(Sample, sample_id)
                    if row is None:
                        s.add(Sample(sample_id=sample_id, captured_at=utcnow(), **fields))
                        return True
                    changed = False
                    for key, value in fields.items():
                        if value is not None and getattr(row, key) is None:
                            setattr(row, key, value)
                            changed = True
                    return changed
            except IntegrityError:  # another process inserted it first: update instead
                if attempt == 2:
                    raise
        return False

    def add_shadow_prediction(self, sample_id: str, revision: str, **fields) -> bool:
        """Keep a shadow's answer once per (sample, shadow revision); a redelivery is a no-op."""
        try:
            with self.write() as s:
                if s.get(ShadowPrediction, (sample_id, revision)) is not None:
                    return False
                s.add(ShadowPrediction(sample_id=sample_id, revision=revision, captured_at=utcnow(),
                                       **fields))
                return True
        except IntegrityError:  # another process stored it first
            return False

    def shadow_comparisons(self, revision: str | None = None) -> list[dict]:
        """Each captured shadow answer next to the production answer for the same sample, with
        the sample's ground truth where there is one (an annotator's label first, else the
        user's feedback: the corrected class, or the production label marked correct).
        ``revision``: one shadow revision (default: the one captured last)."""
        with self.session() as s:
            if revision is None:
                revision = s.scalar(select(ShadowPrediction.revision)
                                    .order_by(ShadowPrediction.captured_at.desc()).limit(1))
                if revision is None:
                    return []
            rows = s.execute(
                select(ShadowPrediction, Sample).join(Sample, Sample.sample_id == ShadowPrediction.sample_id)
                .where(ShadowPrediction.revision == revision, Sample.label.is_not(None))
                .order_by(ShadowPrediction.captured_at)).all()
            ids = [sample.sample_id for _, sample in rows]
            labels: dict[str, str] = {}
            for fb in s.scalars(select(Feedback).where(Feedback.sample_id.in_(ids))):
                if fb.correct_class:
                    labels[fb.sample_id] = fb.correct_class
            by_id = {sample.sample_id: sample for _, sample in rows}
            for fb in s.scalars(select(Feedback).where(Feedback.sample_id.in_(ids), Feedback.correct.is_(True))):
                if fb.sample_id not in labels and by_id[fb.sample_id].label:
                    labels[fb.sample_id] = str(by_id[fb.sample_id].label)
            for lab in s.scalars(select(Label).where(Label.sample_id.in_(ids)).order_by(Label.label_source)):
                if lab.label_source == "annotator" or lab.sample_id not in labels:
                    labels[lab.sample_id] = lab.label
            return [{"sample_id": sample.sample_id, "inference_id": sample.inference_id,
                     "revision": shadow.revision, "production": sample.label,
                     "production_confidence": sample.confidence, "production_revision": sample.revision,
                     "shadow": shadow.label, "shadow_confidence": shadow.confidence,
                     "shadow_version": shadow.model_version, "label": labels.get(sample.sample_id)}
                    for shadow, sample in rows if shadow.label is not None]

    def get_sample(self, sample_id: str) -> Sample | None:
        with self.session() as s:
            return s.get(Sample, sample_id)

    def count_samples(self) -> int:
        from sqlalchemy import func

        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Sample)) or 0


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def open_store(url: str | None = None) -> Store:
    from gourmetgram.loop.settings import db_url

    return Store(db_url(url))


__all__ = ["Store", "open_store", "alembic_config", "utcnow", "as_utc", "Base"]
