-- Transfers' history postings are written in bulk, not at every commit (node.writer, "held
-- postings"): `postings_upto` is the log size below which every transfer's postings are in
-- the postings table; those of later entries are rebuilt from the log when the node starts.
-- A database made before this migration holds every posting already.
INSERT OR REPLACE INTO meta (key, value) SELECT 'postings_upto', COUNT(*) FROM log;
