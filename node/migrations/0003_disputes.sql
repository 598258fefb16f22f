-- Disputes: what went wrong with a peer, with the signed messages that show it. Never applied
-- to the balances: the stewards of both collectives settle a dispute between themselves (by
-- a line settlement, say) and mark it resolved here.

CREATE TABLE disputes (
    id        TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,               -- late_fulfilment, intermediary_loss, statement_mismatch
    peer      TEXT NOT NULL,               -- the other node's key id
    line      TEXT NOT NULL,               -- the credit line's id
    attempt   TEXT NOT NULL,               -- the payment attempt (or statement) it concerns
    created   INTEGER NOT NULL,            -- ms since the Unix epoch, by this node's clock
    evidence  TEXT NOT NULL,               -- JSON: the signed messages, as sent
    resolved  INTEGER NOT NULL DEFAULT 0,
    note      TEXT,                        -- the stewards' note when they resolved it
    UNIQUE (kind, attempt)
) WITHOUT ROWID;
CREATE INDEX disputes_open ON disputes (resolved, created);
