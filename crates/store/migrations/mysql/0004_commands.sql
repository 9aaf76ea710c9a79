-- Commands from other services, recorded in the transaction of their effect, so that a
-- command delivered many times is applied once.
CREATE TABLE processed_commands (
    id           VARCHAR(128) NOT NULL,
    type         VARCHAR(64)  NOT NULL,
    outcome      VARCHAR(16)  NOT NULL,
    processed_at BIGINT       NOT NULL,
    PRIMARY KEY (id),
    INDEX ix_processed_commands_at (processed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
