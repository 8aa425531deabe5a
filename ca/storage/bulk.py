"""Many rows in one statement whose SQL text does not depend on how many rows there are.

SQLAlchemy's multi-row INSERT ("insertmanyvalues") writes a new statement for every batch size;
psycopg then parses each long text anew (its query cache skips long statements) and PostgreSQL
plans it anew, which cost more than the rows themselves in a group-commit batch. On PostgreSQL
the rows go instead as one JSON array read with `json_populate_recordset()` into the table's own
row type: one short text, cached by psycopg and prepared by the server, and one parameter that
Python's C JSON encoder writes (psycopg's per-column array dumpers cost more than the rows).
SQLite runs in-process, so its executemany stays.

On PostgreSQL these statements also skip SQLAlchemy's execution machinery (`execute_driver`):
its per-statement bookkeeping (execution context, result metadata, events) cost about twice the
driver's own work for the group commit's few short statements. Errors still come out as
SQLAlchemy's exception classes, and a lost connection is invalidated as SQLAlchemy would.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator

_CURSOR_KEY = "privca_bulk_cursor"


def execute_driver(connection: Connection, sql: str, parameters: Mapping[str, Any]) -> Any:
    """Run driver-level `sql` (the driver's paramstyle) in the connection's transaction on a
    cursor kept with the DBAPI connection; returns that cursor (rows, rowcount).

    Raises SQLAlchemy's DBAPIError subclasses (IntegrityError for a constraint) like
    `Connection.exec_driver_sql`, and invalidates the connection if the database went away.
    """
    fairy = connection.connection
    dbapi_connection = fairy.dbapi_connection
    kept = fairy.info.get(_CURSOR_KEY)
    if kept is None or kept[0] is not dbapi_connection:
        kept = (dbapi_connection, dbapi_connection.cursor())
        fairy.info[_CURSOR_KEY] = kept
    cursor = kept[1]
    dialect = connection.dialect
    dispatch = connection.dispatch
    # Statement listeners (tracing, tests counting round trips) see these statements too. As
    # registered, each returns the statement and parameters to use (SQLAlchemy wraps the rest).
    for listener in dispatch.before_cursor_execute:
        sql, parameters = listener(connection, cursor, sql, parameters, None, False)
    try:
        cursor.execute(sql, parameters)
    except dialect.loaded_dbapi.Error as exc:
        fairy.info.pop(_CURSOR_KEY, None)
        disconnected = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if disconnected:
            connection.invalidate(exc)
        raise sa_exc.DBAPIError.instance(
            sql,
            parameters,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=disconnected,
            dialect=dialect,
        ) from exc
    for listener in dispatch.after_cursor_execute:
        listener(connection, cursor, sql, parameters, None, False)
    return cursor


def driver_level(connection: Connection) -> bool:
    """Whether this module runs its statements below SQLAlchemy on `connection` (PostgreSQL):
    then it is the cheaper path even for a single row."""
    return connection.dialect.name == "postgresql"


def execute_statement(
    connection: Connection, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> Any:
    """Run a fixed SQLAlchemy Core statement like `Connection.execute` (one parameter set),
    through `execute_driver` where `driver_level(connection)`; returns a DBAPI cursor there and
    SQLAlchemy's result elsewhere: use only `rowcount`, `fetchone()` and `fetchall()` (tuples)."""
    if not driver_level(connection):
        return connection.execute(statement, parameters)
    sql, values = _statement_sql(connection.dialect, statement, parameters)
    return execute_driver(connection, sql, values)


def fetch_rows(
    connection: Connection, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows of a fixed Core SELECT (or a statement with RETURNING) as tuples of the values
    `Connection.execute(statement, parameters).all()` would hold, result types applied (UTC
    datetimes), through `execute_driver` where `driver_level(connection)`."""
    if not driver_level(connection):
        return [tuple(row) for row in connection.execute(statement, parameters)]
    sql, values = _statement_sql(connection.dialect, statement, parameters)
    rows = execute_driver(connection, sql, values).fetchall()
    processors = _result_processors(connection.dialect, statement)
    if not processors:
        return rows
    return [
        tuple(
            value if process is None else process(value)
            for value, process in zip(row, processors, strict=True)
        )
        for row in rows
    ]


@lru_cache(maxsize=64)
def _result_processors(
    dialect: Dialect, statement: Executable
) -> tuple[Callable[[Any], Any] | None, ...]:
    """Per result column, the type's result processor on `dialect` (None where the driver's
    value is already the Python value); empty when no column has one."""
    compiled = statement.compile(dialect=dialect)
    processors = tuple(
        column.type.result_processor(dialect, None)
        # Where SQLAlchemy's own result takes its column types from.
        for column in compiled._result_columns
    )
    return processors if any(processors) else ()


def _statement_sql(
    dialect: Dialect, statement: Executable, parameters: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    sql, defaults, processors = _compiled(dialect, statement)
    values = dict(defaults)
    if parameters:
        values.update(parameters)
    for name, process in processors:
        values[name] = process(values[name])
    return sql, values


@lru_cache(maxsize=64)
def _compiled(
    dialect: Dialect, statement: Executable
) -> tuple[str, dict[str, Any], tuple[tuple[str, Callable[[Any], Any]], ...]]:
    # Compiled once per statement object (they are module constants), as SQLAlchemy's own
    # compiled cache would; the bound values' processors are looked up once too.
    compiled = statement.compile(dialect=dialect)
    if compiled.post_compile_params or compiled.literal_execute_params:
        # An IN list's SQL depends on its length: there is no one fixed text to run.
        raise ValueError("a statement with expanding (IN list) parameters needs Connection.execute")
    processors = []
    for bind, name in compiled.bind_names.items():
        process = bind.type.bind_processor(dialect)
        if process is not None:
            processors.append((name, process))
    return compiled.string, dict(compiled.params), tuple(processors)


def insert_many(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: Sequence[str] = (),
) -> list[Any]:
    """INSERT `rows` (all with the same keys); the `returning` columns of each row inserted (as
    attributes of each returned row), in no particular order on PostgreSQL. One failing row (a
    constraint) fails them all."""
    if not rows:
        return []
    names = tuple(rows[0])
    if not driver_level(connection):
        statement = insert(table)
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
        result = connection.execute(statement, list(rows))
        return list(result.all()) if returning else []
    sql = _insert_sql(connection.dialect, table, names, tuple(returning))
    cursor = execute_driver(
        connection, sql, {"rows": _json_rows(connection.dialect, table, names, rows)}
    )
    if not returning:
        return []
    row_type = _row_type(tuple(returning))
    return [row_type._make(row) for row in cursor.fetchall()]


def insert_many_then(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    statement: Executable,
    parameters: Mapping[str, Any],
) -> int:
    """`insert_many(connection, table, rows)`, then `statement` (an UPDATE or DELETE) with
    `parameters`; returns the statement's rowcount. One round trip where `driver_level`: the
    INSERT is a data-modifying WITH clause of the statement (it runs whatever the statement
    matches, so a caller that finds the wrong rowcount must fail its transaction)."""
    if not rows or not driver_level(connection):
        insert_many(connection, table, rows)
        return execute_statement(connection, statement, parameters).rowcount
    names = tuple(rows[0])
    dialect = connection.dialect
    sql, values = _statement_sql(dialect, statement, parameters)
    if "rows" in values:
        raise ValueError("the statement must not bind a parameter named 'rows'")
    values["rows"] = _json_rows(dialect, table, names, rows)
    inserted = _insert_sql(dialect, table, names, ())
    return execute_driver(connection, f"WITH inserted AS ({inserted}) {sql}", values).rowcount


def update_many(
    connection: Connection,
    table: Table,
    key: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    where: Mapping[str, str] | None = None,
) -> int:
    """UPDATE the row whose `key` column equals each row's `key` with that row's other values,
    where the fixed `where` column/value pairs also hold; returns how many rows changed."""
    if not rows:
        return 0
    names = tuple(rows[0])
    conditions = dict(where or {})
    if not driver_level(connection):
        statement = _sqlite_update(table, key, names, tuple(conditions.items()))
        prefixed = [{f"new_{name}": value for name, value in row.items()} for row in rows]
        return connection.execute(statement, prefixed).rowcount
    sql = _update_sql(connection.dialect, table, key, names, tuple(conditions))
    parameters: dict[str, Any] = {"rows": _json_rows(connection.dialect, table, names, rows)}
    parameters.update({f"where_{i}": value for i, value in enumerate(conditions.values())})
    return execute_driver(connection, sql, parameters).rowcount


_JSON_NATIVE = frozenset({str, int, bool})


def _json_rows(
    dialect: Dialect, table: Table, names: tuple[str, ...], rows: Sequence[Mapping[str, Any]]
) -> str:
    processors = _processors(dialect, table, names)
    out = []
    for row in rows:
        record = {}
        for name, process in zip(names, processors, strict=True):
            value = row[name]
            if process is not None:
                value = process(value)
            if value is None or type(value) in _JSON_NATIVE:
                pass
            elif isinstance(value, bytes):
                value = "\\x" + value.hex()  # bytea's hex input format
            elif isinstance(value, datetime):
                if value.tzinfo is None:
                    raise ValueError("naive datetime given to the database")
                value = value.isoformat()
            record[name] = value
        out.append(record)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=64)
def _row_type(names: tuple[str, ...]) -> Any:
    # Rows by attribute, as SQLAlchemy's Row gives them on the other path.
    return namedtuple("ReturnedRow", names)


@lru_cache(maxsize=64)
def _processors(
    dialect: Dialect, table: Table, names: tuple[str, ...]
) -> tuple[Callable[[Any], Any] | None, ...]:
    # Only our own type decorators (UTC datetimes): the driver-level processors of plain types
    # wrap values for psycopg's own dumpers, which JSON does not go through.
    return tuple(
        column.type.bind_processor(dialect) if isinstance(column.type, TypeDecorator) else None
        for column in (table.c[name] for name in names)
    )


def _quote(dialect: Dialect, table: Table, name: str) -> str:
    # Only the table's own column names reach the SQL text (KeyError for anything else).
    return dialect.identifier_preparer.quote(table.c[name].name)


def _records(dialect: Dialect, table: Table) -> str:
    target = dialect.identifier_preparer.format_table(table)
    return f"json_populate_recordset(NULL::{target}, %(rows)s::json)"


@lru_cache(maxsize=64)
def _insert_sql(
    dialect: Dialect, table: Table, names: tuple[str, ...], returning: tuple[str, ...]
) -> str:
    columns = ", ".join(_quote(dialect, table, name) for name in names)
    target = dialect.identifier_preparer.format_table(table)
    sql = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {_records(dialect, table)}"  # noqa: S608 - schema names only
    if returning:
        sql += " RETURNING " + ", ".join(_quote(dialect, table, name) for name in returning)
    return sql


@lru_cache(maxsize=64)
def _update_sql(
    dialect: Dialect,
    table: Table,
    key: str,
    names: tuple[str, ...],
    conditions: tuple[str, ...],
) -> str:
    target = dialect.identifier_preparer.format_table(table)
    quoted = {name: _quote(dialect, table, name) for name in (*names, *conditions)}
    assignments = ", ".join(f"{quoted[n]} = new.{quoted[n]}" for n in names if n != key)
    filters = "".join(
        f" AND {target}.{quoted[name]} = %(where_{i})s" for i, name in enumerate(conditions)
    )
    return (
        f"UPDATE {target} SET {assignments} "  # noqa: S608 - schema names only, no input
        f"FROM {_records(dialect, table)} AS new "
        f"WHERE {target}.{quoted[key]} = new.{quoted[key]}{filters}"
    )


@lru_cache(maxsize=64)
def _sqlite_update(
    table: Table, key: str, names: tuple[str, ...], conditions: tuple[tuple[str, str], ...]
) -> Any:
    # Bind names must differ from column names, which SQLAlchemy reserves for SET and VALUES.
    statement = table.update().where(table.c[key] == bindparam(f"new_{key}"))
    for name, value in conditions:
        statement = statement.where(table.c[name] == value)
    return statement.values({name: bindparam(f"new_{name}") for name in names if name != key})
