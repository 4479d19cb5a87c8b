-- The MLS state (see mls_store.rs): key/value rows written with the application rows
-- of the same operation.
CREATE TABLE mls_state (
    key     BLOB PRIMARY KEY,
    value   BLOB NOT NULL
);

-- Bumped by every committed transaction, so another process knows to reload.
CREATE TABLE counters (
    name    TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('generation', 0);

-- Small settings: the MLS public key, the certificate, the revocation list.
CREATE TABLE settings (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);

CREATE TABLE conversations (
    group_id    TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    clearance   TEXT,
    created_at  INTEGER NOT NULL,
    -- active, removed (this device was removed), left
    status      TEXT NOT NULL,
    held_count  INTEGER NOT NULL DEFAULT 0,
    held_reason TEXT
);

-- Messages, in the order this device learned of them (rowid).
CREATE TABLE messages (
    local_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    TEXT NOT NULL,
    id          TEXT NOT NULL,
    from_user   TEXT NOT NULL,
    from_device TEXT NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT,
    file        TEXT,
    sent_at     INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    outgoing    INTEGER NOT NULL,
    -- outgoing: pending, sent; incoming: received, read
    status      TEXT NOT NULL,
    UNIQUE (group_id, from_device, id)
);
CREATE INDEX messages_group ON messages (group_id, local_id);

CREATE TABLE receipts (
    group_id    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (group_id, message_id, device_id, kind)
);

-- Server queue items already applied (so a redelivery after a lost ack is skipped).
CREATE TABLE processed (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL
);

-- MLS messages made here and not yet accepted by the server.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    extra       TEXT,
    created_at  INTEGER NOT NULL
);

-- Items for an epoch this device has not reached yet.
CREATE TABLE buffered (
    seq         INTEGER PRIMARY KEY,
    group_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    sender      TEXT,
    payload     BLOB NOT NULL,
    enqueued_at INTEGER NOT NULL
);
