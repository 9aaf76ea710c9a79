-- SQLite compares text byte for byte already (the BINARY collation): nothing to change. The
-- version exists so that both dialects carry the same migrations.
SELECT 1;
