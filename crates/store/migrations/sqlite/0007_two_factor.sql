-- An account's TOTP authenticator. `secret_sealed` is the secret encrypted by the service,
-- never the secret itself. A row without `confirmed_at` is an enrolment waiting for its
-- first code; `last_step` is the last time step accepted, so that a code signs in once.
CREATE TABLE mfa_totp (
    user_id       TEXT    NOT NULL PRIMARY KEY,
    secret_sealed TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    confirmed_at  INTEGER NULL,
    last_step     INTEGER NULL
);

-- Single-use recovery codes, for when the authenticator is lost; only their SHA-256 is kept.
CREATE TABLE recovery_codes (
    user_id    TEXT    NOT NULL,
    code_hash  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER NULL,
    PRIMARY KEY (user_id, code_hash)
);

-- The second step of a sign-in: a correct password on an account with a second factor gives
-- a short-lived challenge, redeemed once with a code. Only its SHA-256 is kept. `epoch` is
-- the user's revocation epoch as read before the password was checked, so that a revocation
-- in between also ends the sign-in.
CREATE TABLE mfa_challenges (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NULL
);
CREATE INDEX ix_mfa_challenges_user ON mfa_challenges (user_id);
CREATE INDEX ix_mfa_challenges_expiry ON mfa_challenges (expires_at);
