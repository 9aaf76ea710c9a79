-- WebAuthn passkeys: a second factor, and a way to sign in without a password. `credential`
-- is the webauthn-rs `Passkey` as JSON (the public key and its counter; no secret is ever
-- held). A credential id may be 1023 bytes, too long for a unique index, so its SHA-256
-- (`credential_hash`) is what makes a credential belong to one account only. `sign_count` is
-- the authenticator's counter as last seen, so that a cloned credential is refused.
CREATE TABLE passkeys (
    id              TEXT    NOT NULL PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    credential_hash TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    credential      TEXT    NOT NULL,
    sign_count      INTEGER NOT NULL,
    backup_eligible INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER NULL
);
CREATE UNIQUE INDEX uq_passkeys_credential ON passkeys (credential_hash);
CREATE INDEX ix_passkeys_user ON passkeys (user_id);

-- WebAuthn ceremonies in progress: the state webauthn-rs needs to check the browser's answer
-- (it holds the challenge), kept between the two requests of a registration or sign-in and
-- taken once. `id` is made by the service (`register:<user id>`, `mfa:<token hash>`, or a
-- random challenge id) and compared exactly, case included.
CREATE TABLE webauthn_ceremonies (
    id         TEXT    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    user_id    TEXT    NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ix_webauthn_ceremonies_user ON webauthn_ceremonies (user_id);
CREATE INDEX ix_webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);
