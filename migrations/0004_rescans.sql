-- Rescans of past blocks for a newly watched address (POST …/addresses with
-- rescan_from_height). Operational state, not a projection: the deposits a rescan finds
-- are ordinary events in the log; this row only says how far the scan got, so a restart
-- resumes it.
CREATE TABLE rescans (
    rescan_id   bigserial   PRIMARY KEY,
    account_id  uuid        NOT NULL,
    address     text        NOT NULL,
    from_height integer     NOT NULL,
    to_height   integer     NOT NULL,  -- the synced tip when the address was watched
    next_height integer     NOT NULL,  -- the next block to read
    status      text        NOT NULL,  -- running | done | failed
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rescans_running ON rescans (rescan_id) WHERE status = 'running';
