-- The writer holds the rows of `events`, and transfers' rows of `postings`, in memory and
-- writes them in bulk (node.writer, HELD_FLUSH): `tables_upto` is the log size below which
-- every such row is in its table; those of later entries are rebuilt from the log when the
-- node starts. A database made before this migration holds every row already.
INSERT OR REPLACE INTO meta (key, value) SELECT 'tables_upto', COUNT(*) FROM log;
