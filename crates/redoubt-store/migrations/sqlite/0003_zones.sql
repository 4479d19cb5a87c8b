-- Secured zones: the definition is the proto `ZoneDefinition` as JSON. Checkpoint keys
-- are derived from the organization key and never stored.
CREATE TABLE zones (
    name        TEXT    PRIMARY KEY,
    definition  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Credentials of gate terminals (the tablet at a checkpoint): only the SHA-256 is kept.
CREATE TABLE gate_credentials (
    token_hash  BLOB    PRIMARY KEY,
    zone        TEXT    NOT NULL,
    checkpoint  TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX gate_credentials_zone ON gate_credentials (zone, checkpoint);

-- Operators' commands to devices and their lifecycle.
CREATE TABLE device_commands (
    id               TEXT    PRIMARY KEY,
    device_id        TEXT    NOT NULL REFERENCES devices (id),
    action           TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    envelope         TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'delivered', 'acknowledged', 'verified', 'expired', 'failed')),
    created_by       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    acknowledged_at  INTEGER,
    verified_at      INTEGER,
    note             TEXT
);
CREATE INDEX device_commands_device ON device_commands (device_id, created_at);
CREATE INDEX device_commands_open ON device_commands (state) WHERE state IN ('queued', 'delivered', 'acknowledged');

-- Device events already recorded (a report may carry an event twice after a crash).
CREATE TABLE device_events (
    device_id  TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (device_id, event_id)
);
