-- No ghost devices: a person's additional device waits for an owner's approval before
-- it may take part in conversations. `approved_at` NULL means pending.
-- `enrolled_by` is who created the enrollment code that enrolled the device (the
-- code's `created_by`, e.g. `admin:NAME`); that admin may not approve it.
-- `approved_by` is `admin:NAME`, `first-device` (the person had no other live device
-- at enrollment) or `migration` (enrolled before approvals existed).
ALTER TABLE devices ADD COLUMN enrolled_by TEXT;
ALTER TABLE devices ADD COLUMN approved_by TEXT;
ALTER TABLE devices ADD COLUMN approved_at INTEGER;
UPDATE devices
   SET approved_by = 'migration',
       approved_at = CAST(strftime('%s', 'now') AS INTEGER),
       enrolled_by = (SELECT created_by FROM enrollment_tokens t WHERE t.device_id = devices.id);
