-- Withdrawals asked for through POST /v1/withdrawals, written (and committed) before the
-- transaction is broadcast, outside the log lock. Whoever then records the transaction —
-- the API after its broadcast, or the mempool watcher or follower when they see it first
-- (it raced the API, or the service crashed between broadcast and append) — records it as
-- the same withdrawal: this account's, source `api`. Operational state, not a projection:
-- the log says what was broadcast; this says only who asked.
CREATE TABLE withdrawal_requests (
    txid         text        PRIMARY KEY,
    account_id   uuid        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
