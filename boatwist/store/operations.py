"""
The device's operations and the last value of each control, in SQLite.

Pure functions on a connection: the store runs them on its writer thread
inside one transaction (L{boatwist.store.service.Store.record_operation}),
so an operation and the control value it set are committed together -- a
restart never shows a value nobody is recorded as having set.

Values are stored as JSON text, as the API carries them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["ControlValue", "OperationRecord", "insert_operation", "select_operations", "select_values"]

#: A value as JSON carries it (None, bool, number, str).
JSONValue = Any


@dataclass(frozen=True)
class OperationRecord:
    """One operation as recorded; C{id} is 0 until the store has given it one."""

    at: float
    user: str
    control: str
    old: JSONValue
    value: JSONValue
    result: str  # "ok" or "error"
    error: str | None
    via: str
    id: int = 0

    def as_dict(self) -> dict[str, JSONValue]:
        return {"id": self.id, "at": self.at, "user": self.user, "control": self.control, "old": self.old,
                "value": self.value, "result": self.result, "error": self.error, "via": self.via}


@dataclass(frozen=True)
class ControlValue:
    """The last value a control was set to, when and by whom."""

    control: str
    value: JSONValue
    changed_at: float
    changed_by: str


def _dump(value: JSONValue) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None) -> JSONValue:
    return None if text is None else json.loads(text)


def insert_operation(conn: sqlite3.Connection, record: OperationRecord, keep_value: bool, kept_at: float) -> int:
    """
    Insert C{record} (and, with C{keep_value}, make its value the control's
    last value); returns the operation's id.  C{kept_at}: the store's run
    clock (age retention).  Runs inside the caller's transaction.
    """
    cursor = conn.execute(
        "INSERT INTO operations (at, user, control, old, value, result, error, via, kept_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.at, record.user, record.control, _dump(record.old), _dump(record.value), record.result,
         record.error, record.via, kept_at),
    )
    if keep_value:
        conn.execute(
            "INSERT INTO control_values (control, value, changed_at, changed_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (control) DO UPDATE SET value = excluded.value, changed_at = excluded.changed_at, "
            "changed_by = excluded.changed_by",
            (record.control, _dump(record.value), record.at, record.user),
        )
    operation_id = cursor.lastrowid
    assert operation_id is not None
    return operation_id


def _record(row: Sequence[Any]) -> OperationRecord:
    return OperationRecord(id=row[0], at=row[1], user=row[2], control=row[3], old=_load(row[4]),
                           value=_load(row[5]), result=row[6], error=row[7], via=row[8])


def select_operations(conn: sqlite3.Connection, before: int | None, limit: int,
                      control: str | None = None) -> list[OperationRecord]:
    """The latest C{limit} operations (before id C{before}, of C{control}), oldest first."""
    conditions: list[str] = []
    params: list[object] = []
    if before is not None:
        conditions.append("id < ?")
        params.append(before)
    if control is not None:
        conditions.append("control = ?")
        params.append(control)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = conn.execute(
        f"SELECT id, at, user, control, old, value, result, error, via FROM operations {where} "
        "ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    rows.reverse()
    return [_record(row) for row in rows]


def select_values(conn: sqlite3.Connection) -> dict[str, ControlValue]:
    """Every control's last recorded value, by control name."""
    rows = conn.execute("SELECT control, value, changed_at, changed_by FROM control_values").fetchall()
    return {row[0]: ControlValue(row[0], _load(row[1]), row[2], row[3]) for row in rows}
