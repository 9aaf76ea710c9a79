-- An account's TOTP authenticator. `secret_sealed` is the secret encrypted by the service,
-- never the secret itself. A row without `confirmed_at` is an enrolment waiting for its
-- first code; `last_step` is the last time step accepted, so that a code signs in once.
CREATE TABLE mfa_totp (
    user_id       CHAR(36)     NOT NULL,
    secret_sealed VARCHAR(255) NOT NULL,
    created_at    BIGINT       NOT NULL,
    confirmed_at  BIGINT       NULL,
    last_step     BIGINT       NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Single-use recovery codes, for when the authenticator is lost; only their SHA-256 is kept.
CREATE TABLE recovery_codes (
    user_id    CHAR(36) NOT NULL,
    code_hash  CHAR(64) NOT NULL,
    created_at BIGINT   NOT NULL,
    used_at    BIGINT   NULL,
    PRIMARY KEY (user_id, code_hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The second step of a sign-in: a correct password on an account with a second factor gives
-- a short-lived challenge, redeemed once with a code. Only its SHA-256 is kept. `epoch` is
-- the user's revocation epoch as read before the password was checked, so that a revocation
-- in between also ends the sign-in.
CREATE TABLE mfa_challenges (
    token_hash CHAR(64) NOT NULL,
    user_id    CHAR(36) NOT NULL,
    epoch      BIGINT   NOT NULL,
    created_at BIGINT   NOT NULL,
    expires_at BIGINT   NOT NULL,
    used_at    BIGINT   NULL,
    PRIMARY KEY (token_hash),
    INDEX ix_mfa_challenges_user (user_id),
    INDEX ix_mfa_challenges_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
