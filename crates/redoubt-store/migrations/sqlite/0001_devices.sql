-- Admin credentials: only the SHA-256 of each token is kept.
CREATE TABLE admin_tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('owner', 'officer', 'operator', 'auditor')),
    token_hash  BLOB    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Modes: built-in presets and custom modes; the definition is the proto `Mode` as JSON.
CREATE TABLE modes (
    name        TEXT    PRIMARY KEY,
    definition  TEXT    NOT NULL,
    builtin     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Single-use enrollment tokens (hashed).
CREATE TABLE enrollment_tokens (
    token_hash  BLOB    PRIMARY KEY,
    user_name   TEXT    NOT NULL,
    mode        TEXT    NOT NULL REFERENCES modes (name),
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    device_id   TEXT
);

-- Enrolled devices, with the newest bundle issued and the newest report received.
CREATE TABLE devices (
    id                  TEXT    PRIMARY KEY,
    user_name           TEXT    NOT NULL,
    public_key          BLOB    NOT NULL UNIQUE,
    hardware            TEXT    NOT NULL,
    assigned_mode       TEXT    NOT NULL REFERENCES modes (name),
    enrolled_at         INTEGER NOT NULL,
    revoked_at          INTEGER,
    bundle_version      INTEGER NOT NULL,
    bundle_envelope     TEXT    NOT NULL,
    bundle_payload      TEXT    NOT NULL,
    bundle_issued_at    INTEGER NOT NULL,
    bundle_expires_at   INTEGER NOT NULL,
    effective_mode      TEXT    NOT NULL,
    compliance          TEXT    NOT NULL CHECK (compliance IN ('pending', 'compliant', 'non_compliant')),
    compliance_reasons  TEXT    NOT NULL,
    last_report_seq     INTEGER,
    last_report_at      INTEGER,
    last_report         TEXT
);
CREATE INDEX devices_user ON devices (user_name);
CREATE INDEX devices_mode ON devices (assigned_mode);

-- Every compliance report, as the signed envelope received.
CREATE TABLE reports (
    device_id    TEXT    NOT NULL REFERENCES devices (id),
    seq          INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    compliance   TEXT    NOT NULL,
    envelope     TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
