CREATE TABLE users (
    id             TEXT    NOT NULL PRIMARY KEY,
    email          TEXT    NOT NULL,
    email_lower    TEXT    NOT NULL,
    email_verified INTEGER NOT NULL DEFAULT 0,
    username       TEXT    NOT NULL,
    username_lower TEXT    NOT NULL,
    display_name   TEXT    NULL,
    bio            TEXT    NULL,
    avatar_url     TEXT    NULL,
    password_hash  TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX uq_users_email ON users (email_lower);
CREATE UNIQUE INDEX uq_users_username ON users (username_lower);
