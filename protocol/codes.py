"""Result codes: one stable code for every outcome of a request, ranked.

Layer: protocol (pure). Owns the vocabulary every refusal is spoken in; the node maps each code
to an HTTP status at one boundary (``node/problems.py``), and the API documents them all.

The order of ``ResultCode`` is the rank (as TigerBeetle ranks its own): when several rules are
broken at once, the ledger reports the first one in this order that applies. Codes are part
of the API: never rename one, only add.

Two choices differ from the order the design notes list, on purpose: an identical retry is
answered ``exists`` before anything else (an applied transfer must not become "expired" or
"over the limit" when retried later), and the payer must be found before their signature
can be checked, so ``account_not_found`` for the payer ranks above ``bad_signature``.
"""

from __future__ import annotations

from enum import Enum


class ResultCode(str, Enum):
    # --- accepted -------------------------------------------------------------------------
    ok = "ok"  # applied now, and in the log
    exists = "exists"  # an identical request was applied before; its original receipt is returned

    # --- the request body itself ----------------------------------------------------------
    invalid_json = "invalid_json"  # not JSON, or not UTF-8
    float_not_allowed = "float_not_allowed"  # a number with a fraction or exponent
    duplicate_key = "duplicate_key"  # one JSON object names a key twice
    integer_out_of_range = "integer_out_of_range"  # an integer beyond ±(2^53−1)
    missing_field = "missing_field"  # a required field is absent
    unknown_field = "unknown_field"  # a field this API version does not know
    invalid_field = "invalid_field"  # a field of the wrong type or format
    body_too_large = "body_too_large"  # the body is over the size cap for this endpoint
    batch_too_large = "batch_too_large"  # more items in a batch than allowed
    unsupported_media_type = "unsupported_media_type"  # the body is not application/json

    # --- ledger rules, in rank order --------------------------------------------------------
    ledger_mismatch = "ledger_mismatch"  # signed for another collective's ledger
    account_not_found = "account_not_found"  # the payer, payee or member does not exist
    bad_signature = "bad_signature"  # a signature does not verify with the signer's key
    not_enough_steward_signatures = "not_enough_steward_signatures"  # fewer than k stewards
    exists_with_different_fields = "exists_with_different_fields"  # id reused, other content
    expired = "expired"  # valid_until has passed
    valid_until_too_far = "valid_until_too_far"  # valid_until is further ahead than allowed
    same_account = "same_account"  # payer and payee are the same account
    amount_must_be_positive = "amount_must_be_positive"  # amount is zero or negative
    account_closed = "account_closed"  # the payer or payee account is closed
    account_exists = "account_exists"  # admission of a handle that is taken
    key_in_use = "key_in_use"  # the key already belongs to another member
    limit_must_not_be_negative = "limit_must_not_be_negative"  # a limit below zero
    limit_below_balance = "limit_below_balance"  # the new limit is below what is in use now
    balance_not_zero = "balance_not_zero"  # closing an account that still owes or is owed
    invalid_threshold = "invalid_threshold"  # k is not between 1 and the number of stewards
    exceeds_debit_limit = "exceeds_debit_limit"  # the payer would go below their debit limit
    exceeds_credit_limit = "exceeds_credit_limit"  # the payee would go above their credit limit

    # --- credit lines and payments across them ------------------------------------------------
    line_exists = "line_exists"  # there is already a line with that collective
    line_not_found = "line_not_found"  # no credit line with that id or collective
    line_suspended = "line_suspended"  # the line is suspended: no new payments across it
    exceeds_line_limit = "exceeds_line_limit"  # the credit line between the collectives is full
    not_a_party = "not_a_party"  # the line or message does not name this collective
    stale_version = "stale_version"  # a line version not newer than the one in force
    quote_mismatch = "quote_mismatch"  # the PREPARE does not match the quote it carries
    amount_mismatch = "amount_mismatch"  # the amounts do not follow the line's rate
    exceeds_max_pay = "exceeds_max_pay"  # the payment costs more than the payer allowed
    insufficient_time = "insufficient_time"  # too little time left before the expiry
    hold_not_found = "hold_not_found"  # no such hold, or not one this signer may settle
    hold_resolved = "hold_resolved"  # the hold was already posted or voided the other way
    condition_mismatch = "condition_mismatch"  # the fulfilment does not hash to the condition
    too_late = "too_late"  # the fulfilment arrived after the hold's expiry
    not_expired = "not_expired"  # voiding for expiry before the expiry
    no_route = "no_route"  # no credit line leads to the payee's collective
    rejected = "rejected"  # the payee's collective refused the payment (see detail)
    downstream_failed = "downstream_failed"  # a collective further along the path did not
    # answer before the expiry of what was forwarded to it
    unknown_peer = "unknown_peer"  # the signing node is no peer of this one
    clock_skew = "clock_skew"  # the peer's clock is too far from ours to settle safely
    exceeds_line_balance = "exceeds_line_balance"  # a settlement larger than what is owed
    unsupported_protocol = "unsupported_protocol"  # no node-to-node protocol version in common
    stale_record = "stale_record"  # a node record older than the one held for that node
    record_conflict = "record_conflict"  # a node signed two records with one counter
    bad_evidence = "bad_evidence"  # evidence of equivocation that does not prove it
    # Witnessing (C2SP tlog-witness add-checkpoint), with the statuses that spec gives:
    unknown_log = "unknown_log"  # 404: this witness cosigns no log of that origin
    old_size_mismatch = "old_size_mismatch"  # 409: the witness last cosigned another size
    inconsistent_checkpoint = "inconsistent_checkpoint"  # 422: not an extension of the last

    # --- signed reads and access -------------------------------------------------------------
    signature_required = "signature_required"  # this read needs a member's signed request
    malformed_signature = "malformed_signature"  # signature headers not in Tally's profile
    bad_digest = "bad_digest"  # Content-Digest does not match the body
    wrong_recipient = "wrong_recipient"  # the request was signed for another node
    stale_request = "stale_request"  # signed too long ago or ahead (check the clock)
    replayed_request = "replayed_request"  # this nonce was used before
    unknown_signer = "unknown_signer"  # the signing key is no member's or steward's
    forbidden = "forbidden"  # the signer may not read this (private balances)

    # --- everything else -----------------------------------------------------------------------
    not_found = "not_found"  # no such resource
    method_not_allowed = "method_not_allowed"  # the resource exists but not with this method
    rate_limited = "rate_limited"  # too many requests from this key; retry after a while
    request_timeout = "request_timeout"  # the body did not arrive in time; nothing was read
    overloaded = "overloaded"  # the node's queue is full; retry after a while
    internal_error = "internal_error"  # a fault in the node; nothing was applied


ACCEPTED = frozenset({ResultCode.ok, ResultCode.exists})
