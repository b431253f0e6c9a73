"""The SQL text of the db engine's statements, built once per vendor, table and columns.

Building and compiling a QuerySet for every load and save costs more than the I/O on
SQLite (``bench/run.py --only profile``), so the hot path's statements (read, read
for update, create, save, delete, and the write that claims SQLite's write lock) are
written here once and kept. They run on Django's own cursor, which keeps the routers,
the connection's options, the error wrapping and the ``%s`` parameter style. The
expiry sweep's batch ``DELETE`` is built here too, per batch size.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["INSERT_OR_NOTHING", "MYSQL_DUPLICATE_KEY", "expired_delete", "statement"]

# Vendors whose INSERT can skip a primary-key collision without an error
# (``ON CONFLICT (key_hash) DO NOTHING``): PostgreSQL, and SQLite from 3.24 (Django
# 5.2 needs 3.31).
INSERT_OR_NOTHING = frozenset({"postgresql", "sqlite"})
# MySQL/MariaDB: ER_DUP_ENTRY. A duplicate key fails only its statement there, never
# the transaction around it.
MYSQL_DUPLICATE_KEY = 1062

# (vendor, table, statement, columns) -> the SQL of the hot path (see statement()).
_STATEMENTS: dict[tuple[str, str, str, tuple[str, ...]], str] = {}


def statement(
    connection: BaseDatabaseWrapper, meta: Any, kind: str, names: tuple[str, ...] = ()
) -> str:
    """The SQL of one hot-path statement on the table of ``meta`` (a model's
    ``_meta``): ``select``, ``select_for_update``, ``claim``, ``insert`` (of the
    columns ``names``), ``delete``, or otherwise an ``UPDATE`` of the columns ``names``
    checked against the version. Parameters: the key hash (and the expected version
    last); an ``INSERT`` or ``UPDATE`` takes the values of ``names`` first."""
    key = (connection.vendor, meta.db_table, kind, names)
    sql = _STATEMENTS.get(key)
    if sql is not None:
        return sql
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    table = quote(meta.db_table)
    where = f"{column('key_hash')} = %s"
    if kind == "select":
        sql = f"SELECT {column('data')}, {column('version')} FROM {table} WHERE {where}"
    elif kind == "select_for_update":
        sql = f"SELECT {column('data')}, {column('version')} FROM {table} WHERE {where}"
        if connection.features.has_select_for_update:
            sql += " FOR UPDATE"
    elif kind == "claim":
        # Matches no row, but takes SQLite's write lock (see db.py's _read_for_update).
        sql = f"UPDATE {table} SET {column('version')} = {column('version')} WHERE 0 = 1"
    elif kind == "insert":
        sql = (
            f"INSERT INTO {table} ({', '.join(column(n) for n in names)}) "
            f"VALUES ({', '.join(['%s'] * len(names))})"
        )
        if connection.vendor in INSERT_OR_NOTHING:
            sql += f" ON CONFLICT ({column('key_hash')}) DO NOTHING"
    elif kind == "delete":
        sql = f"DELETE FROM {table} WHERE {where}"
    else:
        sets = ", ".join(f"{column(name)} = %s" for name in names)
        sql = f"UPDATE {table} SET {sets} WHERE {where} AND {column('version')} = %s"
    _STATEMENTS[key] = sql
    return sql


def expired_delete(connection: BaseDatabaseWrapper, meta: Any, count: int) -> str:
    """The sweep's ``DELETE`` of ``count`` key hashes whose deadline has passed, checked
    in the statement itself. Parameters: the key hashes, then the moment now (as the
    ``expire_date`` column stores it)."""
    quote = connection.ops.quote_name
    return (
        f"DELETE FROM {quote(meta.db_table)} "
        f"WHERE {quote(meta.get_field('key_hash').column)} "
        f"IN ({', '.join(['%s'] * count)}) "
        f"AND {quote(meta.get_field('expire_date').column)} <= %s"
    )
