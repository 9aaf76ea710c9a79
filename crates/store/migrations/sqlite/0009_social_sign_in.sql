-- Identities at an outside provider (GitHub, an OpenID Connect issuer) linked to an account, to
-- sign in with. `subject` is the provider's stable id of the user, never their login or email
-- (both can change hands), and is compared exactly, case included. One identity belongs to one
-- account only. `email` is the address the provider gave at the last sign-in.
CREATE TABLE identities (
    id           TEXT    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    provider     TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    email        TEXT    NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NULL
);
CREATE UNIQUE INDEX uq_identities_subject ON identities (provider, subject);
CREATE INDEX ix_identities_user ON identities (user_id);

-- Browser flows in progress between the redirect to the provider and its callback, taken once.
-- Only the SHA-256 of the `state` sent to the provider is kept (`state_hash`), and of the
-- cookie that binds the flow to the browser that started it (`binding_hash`). `pkce_verifier`
-- and `nonce` are what the callback checks the provider's answer with. A flow with `user_id`
-- links an identity to that account, from the session `session_id`; one without signs in.
CREATE TABLE oauth_flows (
    state_hash    TEXT    NOT NULL PRIMARY KEY,
    binding_hash  TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    user_id       TEXT    NULL,
    session_id    TEXT    NULL,
    redirect_uri  TEXT    NOT NULL,
    pkce_verifier TEXT    NOT NULL,
    nonce         TEXT    NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX ix_oauth_flows_user ON oauth_flows (user_id);
CREATE INDEX ix_oauth_flows_expiry ON oauth_flows (expires_at);

-- Single-use codes the callback hands the web app, exchanged once for a session (or for what
-- signing up needs). Only their SHA-256 is kept. The row holds the identity the provider
-- vouched for until the code is exchanged: `subject` as in `identities`, and the profile the
-- provider gave with it.
CREATE TABLE oauth_login_codes (
    code_hash      TEXT    NOT NULL PRIMARY KEY,
    provider       TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    email          TEXT    NULL,
    email_verified INTEGER NOT NULL DEFAULT 0,
    login          TEXT    NULL,
    name           TEXT    NULL,
    avatar_url     TEXT    NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX ix_oauth_login_codes_expiry ON oauth_login_codes (expires_at);

-- The `amr` methods of a sign-in's first step (a password, or a provider), space-separated, so
-- that the session made after the second step names both. Challenges stored before this
-- followed a password.
ALTER TABLE mfa_challenges ADD COLUMN first_methods TEXT NOT NULL DEFAULT 'pwd';
