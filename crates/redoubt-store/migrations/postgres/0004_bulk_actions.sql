-- As SQLite's 0011.
-- Bulk commands (lock, unlock, wipe) on the devices a filter covered: the devices are
-- fixed when the operator confirms the count, in the same transaction as the one audit
-- entry, and each gets its own signed command in batches afterwards (`done`), so a stop
-- in between resumes where it was.
CREATE TABLE bulk_actions (
    id           TEXT    PRIMARY KEY,
    action       TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    filter       TEXT    NOT NULL,
    devices      BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    finished_at  BIGINT
);

CREATE TABLE bulk_action_devices (
    bulk_id    TEXT    NOT NULL REFERENCES bulk_actions (id),
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    done       BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (bulk_id, device_id)
);
CREATE INDEX bulk_action_devices_pending ON bulk_action_devices (done) WHERE done = 0;
