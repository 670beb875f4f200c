-- boatwist store, schema version 3: the operators' chat history, the audit
-- log, the device's operations and the last value of each control.
--
-- boatwist.store runs this file statement by statement inside ONE transaction
-- together with the INSERT into `version`, so a power cut while a database is
-- being created leaves either nothing or a complete database.  Hence: no
-- BEGIN/COMMIT in here, and nothing that cannot run inside a transaction (no
-- PRAGMA journal_mode, no VACUUM).
--
-- Upgrades go in upgrade-to-vN.sql (N = the version they produce), same rules;
-- this file always describes the newest schema for a fresh database.

-- Exactly one row: the schema version of this file.
CREATE TABLE version (
    version INTEGER NOT NULL
);

-- AUTOINCREMENT, not plain rowid: ids are never reused, even after the newest
-- message was pruned, so an id a browser remembers (paging, Last-Event-ID)
-- always means the same message, and "id <= newest - retention_count" is an
-- exact count-based prune.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    text TEXT NOT NULL,
    via TEXT NOT NULL CHECK (via IN ('web', 'chat')),
    -- 1 for /me
    action INTEGER NOT NULL DEFAULT 0 CHECK (action IN (0, 1)),
    -- unix seconds, wall clock: for display only; order is by id, because a
    -- device's clock jumps (no RTC, NTP at boot).
    at REAL NOT NULL,
    -- the store's running time (run_clock below) when the row was written:
    -- what age retention counts, because no step of the wall clock moves it.
    kept_at REAL NOT NULL DEFAULT 0
);

-- Age-based retention deletes "kept_at < cutoff" on every insert: this index
-- makes that a range seek instead of a scan of the whole history.
CREATE INDEX messages_kept_at ON messages (kept_at);

-- Who did what from where: login, login-failed, logout, refused, operation, ...
-- user and address may be unknown (NULL), e.g. a refusal before any login.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    user TEXT,
    address TEXT,
    detail TEXT NOT NULL DEFAULT '',
    kept_at REAL NOT NULL DEFAULT 0
);

CREATE INDEX audit_kept_at ON audit (kept_at);

-- Every operation on the device, done or failed, by whom and through what:
-- what everyone saw live, kept (EPICS caPutLog: user, control, old, new).
-- old and value are JSON texts (a switch is true/false, a number a number);
-- an action has neither.  Pruned like messages (count and age).
CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    control TEXT NOT NULL,
    old TEXT,
    value TEXT,
    result TEXT NOT NULL CHECK (result IN ('ok', 'error')),
    error TEXT,
    via TEXT NOT NULL,
    kept_at REAL NOT NULL DEFAULT 0
);

CREATE INDEX operations_kept_at ON operations (kept_at);

-- The last value each control was set to, and by whom: restored at start
-- (memory controls keep their value across restarts; every control keeps
-- "changed by alice at ..." for the UI).  Written in the same transaction as
-- the operation that set it.  One row per control, never pruned.
CREATE TABLE control_values (
    control TEXT PRIMARY KEY,
    value TEXT,
    changed_at REAL NOT NULL,
    changed_by TEXT NOT NULL
);

-- Exactly one row: seconds the store has been open, added up over every run
-- of the daemon (the monotonic clock while it runs; time switched off does
-- not count).  A device without a real-time clock cannot know how long it
-- was off, and a wrong wall clock must never make history look old.
CREATE TABLE run_clock (
    seconds REAL NOT NULL
);

INSERT INTO run_clock (seconds) VALUES (0);
