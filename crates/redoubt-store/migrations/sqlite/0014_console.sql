-- The officers' web console: accounts with a password and a second factor, their
-- recovery codes, and sign-in sessions (stored by the SHA-256 of the cookie's secret).
CREATE TABLE console_accounts (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    role             TEXT    NOT NULL CHECK (role IN ('owner', 'officer', 'operator', 'auditor')),
    password_hash    TEXT    NOT NULL,
    -- The TOTP secret, sealed with a key derived from the organization key.
    totp_sealed      BLOB    NOT NULL,
    -- The newest TOTP time step accepted: a code is good once.
    totp_last_step   INTEGER NOT NULL DEFAULT 0,
    language         TEXT,
    created_at       INTEGER NOT NULL,
    created_by       TEXT    NOT NULL,
    disabled_at      INTEGER,
    failed_attempts  INTEGER NOT NULL DEFAULT 0,
    locked_until     INTEGER NOT NULL DEFAULT 0,
    last_sign_in_at  INTEGER
);

CREATE TABLE console_recovery_codes (
    account_id  INTEGER NOT NULL REFERENCES console_accounts (id),
    code_hash   BLOB    NOT NULL,
    used_at     INTEGER,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE console_sessions (
    token_hash    BLOB    PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES console_accounts (id),
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    source        TEXT    NOT NULL,
    ended_at      INTEGER
);
CREATE INDEX console_sessions_account ON console_sessions (account_id);

-- The fleet's compliance, sampled by the server every few minutes for the dashboard's
-- chart (one row per sample; a week is about 2000 rows).
CREATE TABLE compliance_samples (
    at             INTEGER PRIMARY KEY,
    compliant      INTEGER NOT NULL,
    non_compliant  INTEGER NOT NULL,
    stale          INTEGER NOT NULL,
    pending        INTEGER NOT NULL
);
