-- Identities at an outside provider (GitHub, an OpenID Connect issuer) linked to an account, to
-- sign in with. `subject` is the provider's stable id of the user, never their login or email
-- (both can change hands), and is compared byte for byte: a binary string, since the `_bin`
-- collations of MySQL and MariaDB ignore trailing spaces. One identity belongs to one account
-- only. `email` is the address the provider gave at the last sign-in.
CREATE TABLE identities (
    id           CHAR(36)       NOT NULL,
    user_id      CHAR(36)       NOT NULL,
    provider     VARCHAR(32)    NOT NULL,
    subject      VARBINARY(255) NOT NULL,
    email        VARCHAR(254)   NULL,
    created_at   BIGINT         NOT NULL,
    last_used_at BIGINT         NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_identities_subject UNIQUE (provider, subject),
    INDEX ix_identities_user (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Browser flows in progress between the redirect to the provider and its callback, taken once.
-- Only the SHA-256 of the `state` sent to the provider is kept (`state_hash`, compared byte for
-- byte), and of the cookie that binds the flow to the browser that started it
-- (`binding_hash`). `pkce_verifier` and `nonce` are what the callback checks the provider's
-- answer with. A flow with `user_id` links an identity to that account, from the session
-- `session_id`; one without signs in.
CREATE TABLE oauth_flows (
    state_hash    VARBINARY(64)  NOT NULL,
    binding_hash  CHAR(64)       NOT NULL,
    provider      VARCHAR(32)    NOT NULL,
    user_id       CHAR(36)       NULL,
    session_id    CHAR(36)       NULL,
    redirect_uri  VARCHAR(2048)  NOT NULL,
    pkce_verifier VARCHAR(128)   NOT NULL,
    nonce         VARCHAR(128)   NULL,
    created_at    BIGINT         NOT NULL,
    expires_at    BIGINT         NOT NULL,
    PRIMARY KEY (state_hash),
    INDEX ix_oauth_flows_user (user_id),
    INDEX ix_oauth_flows_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Single-use codes the callback hands the web app, exchanged once for a session (or for what
-- signing up needs). Only their SHA-256 is kept (`code_hash`, compared byte for byte). The row
-- holds the identity the provider vouched for until the code is exchanged: `subject` as in
-- `identities`, and the profile the provider gave with it.
CREATE TABLE oauth_login_codes (
    code_hash      VARBINARY(64)  NOT NULL,
    provider       VARCHAR(32)    NOT NULL,
    subject        VARBINARY(255) NOT NULL,
    email          VARCHAR(254)   NULL,
    email_verified SMALLINT       NOT NULL DEFAULT 0,
    login          VARCHAR(255)   NULL,
    name           VARCHAR(255)   NULL,
    avatar_url     VARCHAR(2048)  NULL,
    created_at     BIGINT         NOT NULL,
    expires_at     BIGINT         NOT NULL,
    PRIMARY KEY (code_hash),
    INDEX ix_oauth_login_codes_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The `amr` methods of a sign-in's first step (a password, or a provider), space-separated, so
-- that the session made after the second step names both. Challenges stored before this
-- followed a password.
ALTER TABLE mfa_challenges ADD COLUMN first_methods VARCHAR(64) NOT NULL DEFAULT 'pwd';
