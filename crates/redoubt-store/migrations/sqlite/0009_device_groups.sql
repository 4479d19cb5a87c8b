-- Device groups (a unit, a department, a site). A device may be in several; a group
-- may assign a mode, and a device's assigned modes are its own and its groups' (the
-- strictest applies).
CREATE TABLE device_groups (
    name         TEXT    PRIMARY KEY,
    description  TEXT    NOT NULL,
    mode         TEXT    REFERENCES modes (name),
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE device_group_members (
    group_name  TEXT    NOT NULL REFERENCES device_groups (name),
    device_id   TEXT    NOT NULL REFERENCES devices (id),
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (group_name, device_id)
);
CREATE INDEX device_group_members_device ON device_group_members (device_id);

-- The groups an enrollment code puts its phone into (a JSON array of names).
ALTER TABLE enrollment_tokens ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';

-- A device whose assignments changed (a group's mode, membership) waits here for its
-- next bundle, which the server issues in batches right after the change; set in the
-- change's own transaction, so a crash in between loses nothing.
ALTER TABLE devices ADD COLUMN bundle_stale INTEGER NOT NULL DEFAULT 0;
CREATE INDEX devices_bundle_stale ON devices (bundle_stale) WHERE bundle_stale = 1;

