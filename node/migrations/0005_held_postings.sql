-- Transfers' history postings may wait in memory and be written some commits later
-- (node.writer.HeldPostings): `postings_upto` is a log size below which every transfer's
-- postings are in the postings table; those of later entries that are not are rebuilt from
-- the log when the node starts. A database made before this migration holds them all.
INSERT OR REPLACE INTO meta (key, value) SELECT 'postings_upto', COUNT(*) FROM log;
