-- Enrollment codes are listed in pages, in the order they were made (SQLite's implicit
-- rowid there; an explicit identity column here, numbering existing rows too).
ALTER TABLE enrollment_tokens ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE;
-- Codes not yet used are few beside the used ones; listing them reads only them.
CREATE INDEX enrollment_tokens_open ON enrollment_tokens (expires_at) WHERE used_at IS NULL;
