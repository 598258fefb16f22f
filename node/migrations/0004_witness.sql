-- Witnessing (C2SP tlog-witness), both sides.

-- As a witness: the latest checkpoint cosigned per log origin (with only the log's signature).
-- The check of a request's old size against it and its replacement happen in one step.
CREATE TABLE witnessed (
    origin   TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    note     BLOB NOT NULL,
    updated  INTEGER NOT NULL               -- ms since the Unix epoch, by this node's clock
) WITHOUT ROWID;

-- As a log: the latest cosignature from each witness (a line peer, by node key), on the
-- checkpoint of `size` with `root`. Served with that checkpoint while it is the latest.
CREATE TABLE cosignatures (
    witness  TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    root     BLOB NOT NULL,
    line     TEXT NOT NULL,                 -- the note signature line, as the witness sent it
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
