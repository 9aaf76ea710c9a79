-- WebAuthn passkeys: a second factor, and a way to sign in without a password. `credential`
-- is the webauthn-rs `Passkey` as JSON (the public key and its counter; no secret is ever
-- held). A credential id may be 1023 bytes, too long for a unique index, so its SHA-256
-- (`credential_hash`) is what makes a credential belong to one account only. `sign_count` is
-- the authenticator's counter as last seen, so that a cloned credential is refused.
CREATE TABLE passkeys (
    id              CHAR(36)    NOT NULL,
    user_id         CHAR(36)    NOT NULL,
    credential_hash CHAR(64)    NOT NULL,
    name            VARCHAR(64) NOT NULL,
    credential      TEXT        NOT NULL,
    sign_count      BIGINT      NOT NULL,
    backup_eligible SMALLINT    NOT NULL DEFAULT 0,
    created_at      BIGINT      NOT NULL,
    last_used_at    BIGINT      NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_passkeys_credential UNIQUE (credential_hash),
    INDEX ix_passkeys_user (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- WebAuthn ceremonies in progress: the state webauthn-rs needs to check the browser's answer
-- (it holds the challenge), kept between the two requests of a registration or sign-in and
-- taken once. `id` is made by the service (`register:<user id>`, `mfa:<token hash>`, or a
-- random challenge id) and compared byte for byte: a binary string, since the `_bin` collations
-- of MySQL and MariaDB ignore trailing spaces.
CREATE TABLE webauthn_ceremonies (
    id         VARBINARY(100) NOT NULL,
    kind       VARCHAR(16)  NOT NULL,
    user_id    CHAR(36)     NULL,
    state      MEDIUMTEXT   NOT NULL,
    created_at BIGINT       NOT NULL,
    expires_at BIGINT       NOT NULL,
    PRIMARY KEY (id),
    INDEX ix_webauthn_ceremonies_user (user_id),
    INDEX ix_webauthn_ceremonies_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
