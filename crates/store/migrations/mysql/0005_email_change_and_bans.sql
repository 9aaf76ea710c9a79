-- An email change waits in `pending_email` until it is confirmed from the new mailbox. A ban
-- is its own flag, so that it outlives a deletion: restoring a banned account gives a banned
-- account.
ALTER TABLE users
    ADD COLUMN pending_email VARCHAR(254) NULL,
    ADD COLUMN banned        SMALLINT     NOT NULL DEFAULT 0;
UPDATE users SET banned = 1 WHERE status = 'banned';

-- The address a token was sent to, lower-cased: a live cancel link keeps its (old) address
-- reserved, so that nobody can take it before the owner takes it back.
ALTER TABLE email_tokens
    ADD COLUMN email_lower VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD INDEX ix_email_tokens_email (email_lower, purpose);
UPDATE email_tokens SET email_lower = LOWER(email);
