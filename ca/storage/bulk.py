"""Many rows in one statement whose SQL text does not depend on how many rows there are.

SQLAlchemy's multi-row INSERT ("insertmanyvalues") writes a new statement for every batch size;
psycopg then parses each long text anew (its query cache skips long statements) and PostgreSQL
plans it anew, which cost more than the rows themselves in a group-commit batch. On PostgreSQL
the rows go instead as one JSON array read with `json_populate_recordset()` into the table's own
row type: one short text, cached by psycopg and prepared by the server, and one parameter that
Python's C JSON encoder writes (psycopg's per-column array dumpers cost more than the rows).
SQLite runs in-process, so its executemany stays.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.types import TypeDecorator


def insert_many(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """INSERT `rows` (all with the same keys); the `returning` columns of each row inserted, in
    no particular order on PostgreSQL. One failing row (a constraint) fails them all."""
    if not rows:
        return []
    names = tuple(rows[0])
    if connection.dialect.name != "postgresql":
        statement = insert(table)
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
        result = connection.execute(statement, list(rows))
        return list(result.all()) if returning else []
    sql = _insert_sql(connection.dialect, table, names, tuple(returning))
    result = connection.exec_driver_sql(
        sql, {"rows": _json_rows(connection.dialect, table, names, rows)}
    )
    return list(result.all()) if returning else []


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
    if connection.dialect.name != "postgresql":
        statement = _sqlite_update(table, key, names, tuple(conditions.items()))
        prefixed = [{f"new_{name}": value for name, value in row.items()} for row in rows]
        return connection.execute(statement, prefixed).rowcount
    sql = _update_sql(connection.dialect, table, key, names, tuple(conditions))
    parameters: dict[str, Any] = {"rows": _json_rows(connection.dialect, table, names, rows)}
    parameters.update({f"where_{i}": value for i, value in enumerate(conditions.values())})
    return connection.exec_driver_sql(sql, parameters).rowcount


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
