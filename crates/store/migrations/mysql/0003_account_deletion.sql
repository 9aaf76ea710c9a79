-- Deleted accounts wait here, restorable, until `purge_after`; the sweep finds the due ones
-- through the index without reading the others.
ALTER TABLE users
    ADD COLUMN deleted_at  BIGINT NULL,
    ADD COLUMN purge_after BIGINT NULL,
    ADD INDEX ix_users_purge (status, purge_after);
