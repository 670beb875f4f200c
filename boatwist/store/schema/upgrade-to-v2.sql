-- Upgrade a version-1 store to version 2: operations and control values
-- (see v2.sql for what they are).  Same rules as v2.sql: no BEGIN/COMMIT.

CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    control TEXT NOT NULL,
    old TEXT,
    value TEXT,
    result TEXT NOT NULL CHECK (result IN ('ok', 'error')),
    error TEXT,
    via TEXT NOT NULL
);

CREATE INDEX operations_at ON operations (at);

CREATE TABLE control_values (
    control TEXT PRIMARY KEY,
    value TEXT,
    changed_at REAL NOT NULL,
    changed_by TEXT NOT NULL
);
