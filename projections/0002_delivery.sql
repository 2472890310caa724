-- Subscriber cursors: a fold of the delivery_attempts journal (src/projections/cursors.rs),
-- written in the transaction that appends the journal entries. `journal_n` is the last
-- entry folded: this projection's checkpoint, per subscriber.
CREATE TABLE IF NOT EXISTS subscriber_cursors (
    subscriber_id   uuid        PRIMARY KEY,
    cursor          bigint      NOT NULL,  -- every matching event up to here was delivered
    epoch           integer     NOT NULL,  -- bumped by replay/enable/delete
    status          text        NOT NULL,  -- active | retrying | disabled | deleted
    failures        integer     NOT NULL,  -- failed attempts at the position after cursor
    next_attempt_at timestamptz,
    journal_n       integer     NOT NULL
);
