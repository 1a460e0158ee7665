"""Engine and sessions. One engine per app; the request commits before it answers."""

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, Dialect, Executable, MetaData, Select, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

from app.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


POOL_RECYCLE_SECONDS = 3600

# Execution option for work that never writes: on SQLite it begins a deferred
# transaction, which in WAL mode never waits for, nor blocks, a writer.
READ_ONLY_OPTION = "cpr_read_only"


def create_engine(settings: Settings) -> AsyncEngine:
    # hide_parameters: SQL errors must never carry a child's identifiers into the logs.
    if settings.is_sqlite:
        engine = create_async_engine(settings.database_url, hide_parameters=True)
        _configure_sqlite(engine)
        return engine
    # No pre-ping: on asyncpg it costs three round trips per checkout (BEGIN, an empty
    # query, ROLLBACK). A connection the server has dropped fails its first statement
    # instead; SQLAlchemy then invalidates the pool's older connections, and the request
    # fails closed (503, nothing disclosed; the lookup maps read errors to 503 too).
    # Connections are recycled hourly so none outlives idle timeouts on the way.
    engine = create_async_engine(
        settings.database_url,
        hide_parameters=True,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_recycle=POOL_RECYCLE_SECONDS,
    )
    if settings.database_role:
        _set_role(engine, settings.database_role)
    return engine


def _set_role(engine: AsyncEngine, role: str) -> None:
    """Every connection acts as ``role`` (validated as an identifier in Settings)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET ROLE {role}")
        cursor.close()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, durable commits, foreign keys, and BEGIN IMMEDIATE.

    A deferred transaction that reads and then writes can fail with SQLITE_BUSY
    when another writer commits in between; taking the write lock at BEGIN
    makes concurrent lookups queue instead of fail.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request. Endpoints commit themselves, before they return:
    code after this ``yield`` runs after the response has been sent."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


# --- the lookup's hot path ------------------------------------------------------------------
#
# A lookup runs three statements (principal with its volume counts, candidates, the
# audit INSERT). Through SQLAlchemy's AsyncConnection each costs about 0.2 ms of Python
# above what the driver needs, and a checked-out Connection another 0.2 ms; on a
# two-core machine that was a quarter of a lookup's CPU. So the hot path takes a
# connection straight from the engine's pool (same pool, same SET ROLE, same recycling)
# and, on PostgreSQL, runs the statements through asyncpg itself: the SQL is compiled
# once from the same Core statements, and values pass through the same type processors
# SQLAlchemy would use. Each statement commits itself (asyncpg outside a transaction
# is autocommit; a single INSERT is atomic, trigger and all), so the audit event is
# durable when the INSERT returns. On SQLite, SQLAlchemy Core: the reads in a deferred
# transaction, the INSERT in a BEGIN IMMEDIATE one, committed explicitly. Either way
# the reads and the write are not one transaction; at READ COMMITTED (PostgreSQL's
# default) they never saw one snapshot anyway, and two concurrent lookups could
# always both count below a limit before either wrote.


class DatabaseUnavailable(Exception):
    """A hot-path statement failed: the database refused it or could not be reached."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # (name, default value, bind processor) in the order of the $n placeholders
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    # (key, result processor) of each selected column, in order
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect) -> "_Compiled":
        compiled = statement.compile(dialect=dialect)
        binds = []
        for name in compiled.positiontup or ():
            parameter = compiled.binds[name]
            processor = parameter.type.dialect_impl(dialect).bind_processor(dialect)
            binds.append((name, parameter.value, processor))
        columns = []
        if isinstance(statement, Select):
            for key, column in statement.selected_columns.items():
                processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
                columns.append((key, processor))
        return cls(compiled.string, tuple(binds), tuple(columns))

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, default, processor in self.binds:
            value = parameters.get(name, default)
            values.append(processor(value) if processor is not None else value)
        return values

    def mapping(self, record: Sequence[Any]) -> dict[str, Any]:
        return {
            key: processor(value) if processor is not None else value
            for (key, processor), value in zip(self.columns, record, strict=True)
        }


class HotStatement:
    """A Core statement for the hot path, compiled for asyncpg on first use."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled.of(self.statement, dialect)
        return self._compiled


class HotConnection:
    """The lookup's connection: fetch rows, execute, commit; any failure of the
    database is DatabaseUnavailable (the caller fails closed)."""

    dialect_name: str

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        raise NotImplementedError

    async def execute(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def commit(self) -> None:
        raise NotImplementedError


class _AsyncpgConnection(HotConnection):
    dialect_name = "postgresql"

    def __init__(self, pooled: PoolProxiedConnection, dialect: Dialect) -> None:
        self._driver: Any = pooled.driver_connection
        self._dialect = dialect
        self.broken = False  # never to be handed out again
        self.lost = False  # the database ended it, and most likely its siblings too

    async def _run(
        self, method: str, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Any:
        compiled = statement.compiled(self._dialect)
        try:
            return await getattr(self._driver, method)(
                compiled.sql, *compiled.arguments(parameters)
            )
        except asyncio.CancelledError:
            # A statement cut off mid-flight leaves the connection busy.
            self.broken = True
            raise
        except Exception as exc:
            # A statement the server refused leaves the connection usable; a connection
            # that failed, or that the server ended (a restart, a failover), is not.
            self.lost = self._driver.is_closed() or not isinstance(exc, asyncpg.PostgresError)
            self.broken = self.lost
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        records = await self._run("fetch", statement, parameters)
        compiled = statement.compiled(self._dialect)
        return [compiled.mapping(record) for record in records]

    async def execute(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        await self._run("execute", statement, parameters)

    async def commit(self) -> None:
        """Nothing to do: each statement committed as it ran."""


class _CoreConnection(HotConnection):
    """SQLite, through SQLAlchemy Core. Reads run in a deferred transaction (in WAL
    mode it neither waits for nor blocks a writer); the write gets a BEGIN IMMEDIATE
    transaction of its own, so the database's one write lock is held for the INSERT
    and COMMIT only, not across the whole request while other requests run."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.dialect_name = connection.dialect.name
        self._writing = False

    async def fetch(
        self, statement: HotStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        try:
            if not self._writing and not self._connection.in_transaction():
                await self._connection.execution_options(**{READ_ONLY_OPTION: True})
            result = await self._connection.execute(statement.statement, dict(parameters))
            return result.mappings().all()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def execute(self, statement: HotStatement, parameters: Mapping[str, Any]) -> None:
        try:
            if not self._writing:
                if self._connection.in_transaction():
                    await self._connection.commit()  # the reads' transaction
                await self._connection.execution_options(**{READ_ONLY_OPTION: False})
                self._writing = True
            await self._connection.execute(statement.statement, dict(parameters))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    async def commit(self) -> None:
        try:
            await self._connection.commit()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc


@asynccontextmanager
async def hot_connection(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[HotConnection]:
    """A connection from the sessionmaker's engine's pool for the lookup's hot path.
    Anything not committed when it goes back is rolled back."""
    engine: AsyncEngine = sessionmaker.kw["bind"]
    if engine.dialect.name != "postgresql":
        try:
            async with engine.connect() as connection:
                yield _CoreConnection(connection)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        return
    try:
        pooled = await engine.raw_connection()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(type(exc).__name__) from exc
    hot = _AsyncpgConnection(pooled, engine.dialect)
    try:
        yield hot
    finally:
        # In a greenlet: returning (or discarding) a connection may have to await it.
        if hot.lost:
            # As SQLAlchemy does on a disconnect: every connection the pool holds that is
            # older than this one is replaced at its next checkout, so that one lookup
            # fails closed after a restart, not one per pooled connection.
            await greenlet_spawn(engine.pool._invalidate, pooled)
        else:
            await greenlet_spawn(pooled.invalidate if hot.broken else pooled.close)
