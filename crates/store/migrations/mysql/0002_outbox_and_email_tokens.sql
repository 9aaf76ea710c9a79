-- Side effects written in the same transaction as the change that causes them.
CREATE TABLE outbox (
    seq             BIGINT       NOT NULL AUTO_INCREMENT,
    id              CHAR(36)     NOT NULL,
    kind            VARCHAR(16)  NOT NULL,
    name            VARCHAR(64)  NOT NULL,
    user_id         CHAR(36)     NOT NULL,
    payload         MEDIUMTEXT   NOT NULL,
    created_at      BIGINT       NOT NULL,
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NOT NULL,
    last_error      VARCHAR(512) NULL,
    dispatched_at   BIGINT       NULL,
    PRIMARY KEY (seq),
    CONSTRAINT uq_outbox_id UNIQUE (id),
    INDEX ix_outbox_pending (kind, dispatched_at, seq),
    INDEX ix_outbox_dispatched (dispatched_at),
    INDEX ix_outbox_user (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Single-use tokens sent by email; only their SHA-256 is kept.
CREATE TABLE email_tokens (
    token_hash CHAR(64)     NOT NULL,
    user_id    CHAR(36)     NOT NULL,
    purpose    VARCHAR(16)  NOT NULL,
    email      VARCHAR(254) NOT NULL,
    created_at BIGINT       NOT NULL,
    expires_at BIGINT       NOT NULL,
    used_at    BIGINT       NULL,
    PRIMARY KEY (token_hash),
    INDEX ix_email_tokens_user (user_id, purpose),
    INDEX ix_email_tokens_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row per email intent a worker has started or finished sending: makes a job that is
-- delivered twice send its email once.
CREATE TABLE email_deliveries (
    intent_id  CHAR(36)    NOT NULL,
    state      VARCHAR(16) NOT NULL,
    claimed_by VARCHAR(128) NOT NULL,
    claimed_at BIGINT      NOT NULL,
    sent_at    BIGINT      NULL,
    PRIMARY KEY (intent_id),
    INDEX ix_email_deliveries_claimed (claimed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Named leases, so that of several `beat` processes exactly one runs the sweeps.
CREATE TABLE leases (
    name       VARCHAR(64)  NOT NULL,
    holder     VARCHAR(128) NOT NULL,
    expires_at BIGINT       NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
