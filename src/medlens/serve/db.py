"""Database: typed SQLAlchemy 2 models, the engine, and Alembic migrations applied at start-up.

The schema is owned by the Alembic scripts in :mod:`medlens.serve.migrations` (shipped inside the
package), never by ``create_all``: a server upgraded in place migrates its existing database
instead of silently running against an old schema. SQLite (one file in the workspace) is the
default so the service starts with no other process; PostgreSQL works through ``DATABASE_URL``.

Everything the service must share between processes lives here too, so that any number of web
processes (``medlens serve --workers N``) and batch workers (``medlens worker``) can run against
one database: sessions, login throttling (:class:`Throttle`), and the batch queue (each
:class:`BatchItem` has its own status, claim and lease). PostgreSQL rather than Redis: the
database is already required, already backed up and already transactional, so a job claim and
the result it produces commit together (a crash leaves either both or neither); a second
stateful service would add a failure mode and nothing these volumes (hundreds of files a batch,
a few logins a minute) need.

What is stored is the minimum a clinician's history needs: no patient names, IDs or birth dates
(DICOM identifiers are removed before an image is stored), no client IP addresses, no plaintext
passwords or tokens (argon2id hashes; SHA-256 of random session and API tokens).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="clinician")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UserSession(Base):
    """A server-side login session; the cookie holds a random token, the row only its hash."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class ApiToken(Base):
    """A personal token for REST clients; shown once, stored as SHA-256 (it is 256 random bits)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship(lazy="joined")


class StoredImage(Base):
    """An uploaded image, stored under a random id; ``display_name`` is sanitised display text."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    source_format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    deidentified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An accession or study number the user typed in (migration 0003); NULL unless given.
    accession: Mapped[str | None] = mapped_column(String(64), nullable=True)


class BatchJob(Base):
    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    bundle_key: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Result(Base):
    """One prediction of one model on one stored image, with everything its page shows."""

    __tablename__ = "results"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batch_jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    bundle_key: Mapped[str] = mapped_column(String(120))
    bundle_name: Mapped[str] = mapped_column(String(200))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(80))
    confidence: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(80))
    decision_rule: Mapped[str] = mapped_column(String(16))
    decision_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    calibrated: Mapped[bool] = mapped_column(Boolean, default=False)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    preprocess_info: Mapped[dict[str, Any]] = mapped_column(JSON)
    borderline: Mapped[list[str]] = mapped_column(JSON, default=list)
    priority_rank: Mapped[int] = mapped_column(Integer, default=0)
    risk: Mapped[float] = mapped_column(Float, default=0.0)
    summary: Mapped[str] = mapped_column(Text)
    summary_llm: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A multi-task model's other heads ({head: {label, confidence, probabilities} or {value}})
    # and, for a fusion model, the modalities the prediction used. Nullable: results stored
    # before migration 0002, and results of plain single-image models, have neither.
    heads: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    modalities_used: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # Input gate and conformal set (migration 0005): {status, reason, gate, prediction_set,
    # uncertain, input_check}. Null for results stored before: read as "ok", check absent.
    trust: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    image: Mapped[StoredImage] = relationship(lazy="joined")
    user: Mapped[User] = relationship(lazy="joined")


# A batch item's life: queued (its de-identified file staged in the workspace) -> running
# (claimed by one worker until ``lease_until``) -> done (``result_id`` set) or failed (``error``).
ITEM_QUEUED, ITEM_RUNNING, ITEM_DONE, ITEM_FAILED = "queued", "running", "done", "failed"


class BatchItem(Base):
    __tablename__ = "batch_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    display_name: Mapped[str] = mapped_column(String(200))
    result_id: Mapped[str | None] = mapped_column(
        ForeignKey("results.id", ondelete="SET NULL"), nullable=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The durable queue (migration 0004): status, the staged file, who holds it and until when.
    status: Mapped[str] = mapped_column(String(16), default=ITEM_QUEUED, index=True)
    staged_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    result: Mapped[Result | None] = relationship(lazy="joined")


class Throttle(Base):
    """A rate-limit counter shared by every process (migration 0004).

    ``key`` is an HMAC of the logical key (``pair:<user>|<client>``, ``ip:<address>``...), so
    neither usernames typed by strangers nor client addresses are stored readable.
    """

    __tablename__ = "throttle"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AppSetting(Base):
    """Run-time settings an admin changes (sign-up open) and the server's CSRF secret."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def normalise_url(url: str) -> str:
    """``postgresql://`` (or Heroku-style ``postgres://``) without a driver means psycopg 3, the
    driver the ``serve`` extra installs (SQLAlchemy's own default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and cross-thread use."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA secure_delete=ON")  # deleted results leave no readable pages
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATION_LOCK = 0x6D65646C656E73  # "medlens": the PostgreSQL advisory lock migrations take


def migrate(engine: Engine, revision: str = "head", *, downgrade: bool = False) -> None:
    """Bring the database to ``revision`` (the newest schema by default) with the package's
    Alembic scripts.

    On PostgreSQL the migration holds a transaction-level advisory lock, so a web process and a
    worker started together (compose) never run the same migration twice; SQLite serialises
    writers by itself.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        (command.downgrade if downgrade else command.upgrade)(cfg, revision)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
