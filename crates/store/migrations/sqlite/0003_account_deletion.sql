-- Deleted accounts wait here, restorable, until `purge_after`; the sweep finds the due ones
-- through the index without reading the others.
ALTER TABLE users ADD COLUMN deleted_at INTEGER NULL;
ALTER TABLE users ADD COLUMN purge_after INTEGER NULL;
CREATE INDEX ix_users_purge ON users (status, purge_after);
