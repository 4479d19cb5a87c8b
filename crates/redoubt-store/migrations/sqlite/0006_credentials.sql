-- Credentials expire and can be revoked by someone (named in the audit log too).
-- Credentials made before expiry existed get the default lifetime from their creation,
-- but at least 30 days from this migration, so an upgrade never locks anyone out at once.
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN revoked_by TEXT;
UPDATE admin_tokens
   SET expires_at = max(created_at + 7776000, CAST(strftime('%s', 'now') AS INTEGER) + 2592000);

ALTER TABLE gate_credentials ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gate_credentials ADD COLUMN revoked_by TEXT;
UPDATE gate_credentials
   SET expires_at = max(created_at + 31536000, CAST(strftime('%s', 'now') AS INTEGER) + 2592000);
