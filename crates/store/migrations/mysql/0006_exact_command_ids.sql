-- Command ids are compared byte for byte, as their senders mean them: `Cmd-1`, `cmd-1` and
-- `cmd-1 ` are three commands (the table's collation made them one, ignoring case and
-- trailing spaces).
ALTER TABLE processed_commands MODIFY id VARBINARY(512) NOT NULL;
