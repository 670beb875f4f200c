-- Upgrade a version-2 store to version 3: age retention counts the store's
-- running time (run_clock), not the wall clock (see v3.sql).  Same rules as
-- v3.sql: no BEGIN/COMMIT.  Rows already there start at running time 0: they
-- are kept retention_days of running from now on -- longer, never shorter.

CREATE TABLE run_clock (
    seconds REAL NOT NULL
);

INSERT INTO run_clock (seconds) VALUES (0);

ALTER TABLE messages ADD COLUMN kept_at REAL NOT NULL DEFAULT 0;
ALTER TABLE audit ADD COLUMN kept_at REAL NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN kept_at REAL NOT NULL DEFAULT 0;

DROP INDEX messages_at;
DROP INDEX audit_at;
DROP INDEX operations_at;

CREATE INDEX messages_kept_at ON messages (kept_at);
CREATE INDEX audit_kept_at ON audit (kept_at);
CREATE INDEX operations_kept_at ON operations (kept_at);
