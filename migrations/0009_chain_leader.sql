-- The chain leader's lease, with a fencing epoch (issue 14). One row: who leads, since
-- when, until when (PostgreSQL's clock, the only one every instance shares). A new
-- leader takes the lease only once it expired, and increments `epoch`; every append of
-- the follower checks, in its own transaction and under a row share lock, that the epoch
-- is still the one it was given, so a leader that was paused or cut off while another
-- took over cannot append when it wakes.
-- (0008 is the /btc_ipn unique key of issue 13.)
CREATE TABLE chain_leader (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint NOT NULL,
    holder     text NOT NULL,
    since      timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
