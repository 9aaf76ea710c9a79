-- Side effects written in the same transaction as the change that causes them.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT    NULL,
    dispatched_at   INTEGER NULL
);
CREATE UNIQUE INDEX uq_outbox_id ON outbox (id);
CREATE INDEX ix_outbox_pending ON outbox (kind, dispatched_at, seq);
CREATE INDEX ix_outbox_dispatched ON outbox (dispatched_at);
CREATE INDEX ix_outbox_user ON outbox (user_id);

-- Single-use tokens sent by email; only their SHA-256 is kept.
CREATE TABLE email_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    purpose    TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NULL
);
CREATE INDEX ix_email_tokens_user ON email_tokens (user_id, purpose);
CREATE INDEX ix_email_tokens_expiry ON email_tokens (expires_at);

-- One row per email intent a worker has started or finished sending.
CREATE TABLE email_deliveries (
    intent_id  TEXT    NOT NULL PRIMARY KEY,
    state      TEXT    NOT NULL,
    claimed_by TEXT    NOT NULL,
    claimed_at INTEGER NOT NULL,
    sent_at    INTEGER NULL
);
CREATE INDEX ix_email_deliveries_claimed ON email_deliveries (claimed_at);

-- Named leases, so that of several `beat` processes exactly one runs the sweeps.
CREATE TABLE leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
