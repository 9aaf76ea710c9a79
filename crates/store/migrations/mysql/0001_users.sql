CREATE TABLE users (
    id             CHAR(36)      NOT NULL,
    email          VARCHAR(254)  NOT NULL,
    email_lower    VARCHAR(254)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    email_verified SMALLINT      NOT NULL DEFAULT 0,
    username       VARCHAR(32)   NOT NULL,
    username_lower VARCHAR(32)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    display_name   VARCHAR(64)   NULL,
    bio            VARCHAR(500)  NULL,
    avatar_url     VARCHAR(2048) NULL,
    password_hash  VARCHAR(255)  NOT NULL,
    status         VARCHAR(16)   NOT NULL,
    created_at     BIGINT        NOT NULL,
    updated_at     BIGINT        NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_users_email UNIQUE (email_lower),
    CONSTRAINT uq_users_username UNIQUE (username_lower)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
