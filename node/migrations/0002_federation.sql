-- Credit lines and payments across them. Lines and holds are derived from the log, like
-- accounts; payments and quotes are the federation driver's own state (what to send next).

-- The latest signed version of each credit line.
CREATE TABLE lines (
    id     TEXT PRIMARY KEY,
    signed TEXT NOT NULL
) WITHOUT ROWID;

-- Holds on this ledger, by key "<attempt id>/out" or "<attempt id>/in".
CREATE TABLE holds (
    key   TEXT PRIMARY KEY,
    doc   TEXT NOT NULL,
    state TEXT NOT NULL
) WITHOUT ROWID;

-- Payments this node takes part in: the settlement state machine's state and the signed
-- messages the driver must be able to send again after a restart.
CREATE TABLE payments (
    id       TEXT PRIMARY KEY,
    doc      TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX payments_unfinished ON payments (finished);

-- Quotes this node gave as a destination: the fulfilment stays here until it is used.
-- At most one attempt per order is ever fulfilled.
CREATE TABLE quotes (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL,
    fulfilment  BLOB NOT NULL,
    doc         TEXT NOT NULL,
    fulfilled   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX quotes_order ON quotes (order_id);
