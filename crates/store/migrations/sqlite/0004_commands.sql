-- Commands from other services, recorded in the transaction of their effect, so that a
-- command delivered many times is applied once.
CREATE TABLE processed_commands (
    id           TEXT    NOT NULL PRIMARY KEY,
    type         TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    processed_at INTEGER NOT NULL
);
CREATE INDEX ix_processed_commands_at ON processed_commands (processed_at);
