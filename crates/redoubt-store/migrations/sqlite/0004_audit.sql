-- Tamper-evident audit log: an append-only hash chain. Each row's hash covers its
-- fields and the previous row's hash (`redoubt_policy::entry_hash`); `detail` is the
-- JSON object, compact.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    device_id  TEXT,
    detail     TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
CREATE INDEX audit_log_device ON audit_log (device_id, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- Rows are never changed or removed by Redoubt. (Someone with write access to the
-- file can drop these triggers; the hash chain and the signed head detect that.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- The newest entry's (seq, hash), signed by the organization key (an `audit-head/v1`
-- envelope). One row, overwritten at every append: an older signed head is never
-- kept, so deleting the newest entries cannot fall back to a head that still matches.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    envelope  TEXT    NOT NULL
);
