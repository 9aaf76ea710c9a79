-- An email change waits in `pending_email` until it is confirmed from the new mailbox. A ban
-- is its own flag, so that it outlives a deletion: restoring a banned account gives a banned
-- account.
ALTER TABLE users ADD COLUMN pending_email TEXT NULL;
ALTER TABLE users ADD COLUMN banned INTEGER NOT NULL DEFAULT 0;
UPDATE users SET banned = 1 WHERE status = 'banned';

-- The address a token was sent to, lower-cased: a live cancel link keeps its (old) address
-- reserved, so that nobody can take it before the owner takes it back.
ALTER TABLE email_tokens ADD COLUMN email_lower TEXT NULL;
CREATE INDEX ix_email_tokens_email ON email_tokens (email_lower, purpose);
UPDATE email_tokens SET email_lower = LOWER(email);
