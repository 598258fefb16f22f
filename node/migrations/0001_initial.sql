-- Tally schema, version 1. The log is the truth; every other table is derived from it in the
-- same transaction that appends to it, so `tally audit` can rebuild and compare them.
-- (Since version 5, transfers' `postings` may be written some commits later: see 0005.)

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per log entry: the RFC 8785 envelope {type, node_time, payload}.
CREATE TABLE log (
    idx   INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);

-- RFC 6962 stored hashes (Go tlog numbering): each full subtree hash stored once.
CREATE TABLE tree_hashes (
    idx  INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);

-- Signed checkpoints, stored before they are served.
CREATE TABLE checkpoints (
    size INTEGER PRIMARY KEY,
    note BLOB NOT NULL
);

CREATE TABLE accounts (
    handle         TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    key            TEXT,
    debit_limit    INTEGER NOT NULL,
    credit_limit   INTEGER NOT NULL,
    balance        INTEGER NOT NULL DEFAULT 0,
    pending_debit  INTEGER NOT NULL DEFAULT 0,
    pending_credit INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL DEFAULT 'open'
) WITHOUT ROWID;

-- Every applied event id, forever: ids are unique for the life of the ledger.
CREATE TABLE events (
    id     TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    idx    INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;

-- One posting per account a transfer moves: the account's history, by log index.
CREATE TABLE postings (
    handle       TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    counterparty TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    node_time    INTEGER NOT NULL,
    PRIMARY KEY (handle, idx)
) WITHOUT ROWID;

-- Memos live beside the log: the entry holds only SHA-256(salt || memo), so erasing a memo
-- here leaves the log verifiable.
CREATE TABLE memos (
    idx  INTEGER PRIMARY KEY,
    salt BLOB NOT NULL,
    memo TEXT NOT NULL
);

-- Nonces of signed requests, remembered until they could no longer be fresh.
CREATE TABLE nonces (
    nonce   TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX nonces_expires ON nonces (expires);
