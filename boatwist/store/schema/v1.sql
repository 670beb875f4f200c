-- boatwist store, schema version 1: the operators' chat history and the audit log.
--
-- boatwist.store runs this file statement by statement inside ONE transaction
-- together with the INSERT into `version`, so a power cut while a database is
-- being created leaves either nothing or a complete v1 database.  Hence: no
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
    -- unix seconds, wall clock: for display and age-based retention only;
    -- order is by id, because a device's clock jumps (no RTC, NTP at boot).
    at REAL NOT NULL
);

-- Age-based retention deletes "at < cutoff" on every insert: this index makes
-- that a range seek instead of a scan of the whole history.
CREATE INDEX messages_at ON messages (at);

-- Who did what from where: login, login-failed, logout, refused, operation, ...
-- user and address may be unknown (NULL), e.g. a refusal before any login.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    user TEXT,
    address TEXT,
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_at ON audit (at);
