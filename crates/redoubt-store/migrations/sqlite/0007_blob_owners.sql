-- Files belong to a conversation: only its current members may fetch one, and each
-- device's live (not expired) files count against its storage quota.
ALTER TABLE blobs ADD COLUMN group_id TEXT;
-- A file uploaded before this migration names no conversation, and the server cannot
-- learn which one it was sent in (the file's id travels inside the MLS message). It
-- expires at once: no download finds it, and the sweeper deletes its record and bytes.
UPDATE blobs SET expires_at = 0 WHERE group_id IS NULL;
CREATE INDEX blobs_uploader ON blobs (uploader, expires_at);

-- One-time KeyPackages each device handed out, with the time: a device hands out at
-- most a configured number per hour to all claimers together (then its last-resort
-- KeyPackage), so nobody can drain a person's stock. Rows older than the hour are
-- deleted by the claim that looks at them (at most the limit per device is kept).
CREATE TABLE key_package_handouts (
    device_id   TEXT    NOT NULL,
    handed_at   INTEGER NOT NULL
);
CREATE INDEX key_package_handouts_device ON key_package_handouts (device_id, handed_at);
