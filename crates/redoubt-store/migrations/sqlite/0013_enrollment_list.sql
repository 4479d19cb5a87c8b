-- Codes not yet used are few beside the used ones; listing them reads only them.
CREATE INDEX enrollment_tokens_open ON enrollment_tokens (expires_at) WHERE used_at IS NULL;
