-- Messaging (MLS delivery service). The server keeps ciphertext, group ids, epochs,
-- device ids, sizes and times; nothing that decrypts a message.

-- The MLS signature key the organization certified for each device (the newest one).
CREATE TABLE member_certificates (
    device_id   TEXT    PRIMARY KEY REFERENCES devices (id),
    mls_key     BLOB    NOT NULL,
    envelope    TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL
);

-- KeyPackages: one-time ones are deleted when claimed; the last-resort one is kept.
CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT    NOT NULL REFERENCES devices (id),
    data        BLOB    NOT NULL,
    last_resort INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL
);
CREATE INDEX key_packages_device ON key_packages (device_id, last_resort, id);

-- One row per group: the sequencer's state (epoch compare-and-set).
CREATE TABLE groups (
    id               TEXT    PRIMARY KEY,
    epoch            INTEGER NOT NULL,
    clearance        TEXT    REFERENCES modes (name),
    created_by       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    group_info       BLOB,
    last_commit_hash BLOB
);

-- Member devices as declared by the last accepted commit.
CREATE TABLE group_members (
    group_id    TEXT    NOT NULL REFERENCES groups (id),
    device_id   TEXT    NOT NULL REFERENCES devices (id),
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_members_device ON group_members (device_id);

-- Ciphertext stored once, referenced by every recipient's queue entry.
CREATE TABLE payloads (
    id          INTEGER PRIMARY KEY,
    data        BLOB    NOT NULL
);

-- Per-device queues; an entry leaves only when the device acknowledges it (or expires).
CREATE TABLE queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT    NOT NULL,
    group_id    TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('commit', 'welcome', 'application', 'removal_request')),
    epoch       INTEGER NOT NULL,
    sender      TEXT,
    payload_id  INTEGER NOT NULL REFERENCES payloads (id),
    size        INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX queue_device ON queue (device_id, seq);
CREATE INDEX queue_expiry ON queue (expires_at);
CREATE INDEX queue_payload ON queue (payload_id);

-- Message ids a device already sent, so a retry after a lost answer is not queued twice.
CREATE TABLE sent_messages (
    device_id   TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    accepted_at INTEGER NOT NULL,
    recipients  INTEGER NOT NULL,
    PRIMARY KEY (device_id, client_id)
);

-- Encrypted files (the bytes live in the data dir's blobs/ folder).
CREATE TABLE blobs (
    id          TEXT    PRIMARY KEY,
    uploader    TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX blobs_expiry ON blobs (expires_at);

-- Items that expired undelivered, per device.
ALTER TABLE devices ADD COLUMN messages_expired INTEGER NOT NULL DEFAULT 0;
