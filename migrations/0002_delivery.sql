-- Webhook delivery: who is subscribed, and the append-only journal of everything that
-- happened to each subscription. Subscriber cursors (projections/0002_delivery.sql) are
-- a fold of this journal, so they survive restarts and can be rebuilt from it.

-- A subscription as created. Never updated: deletion, replays and enabling are journal
-- entries. `secret` signs deliveries (Standard Webhooks) and is shown once, at creation.
CREATE TABLE subscribers (
    subscriber_id  uuid        PRIMARY KEY,
    url            text        NOT NULL,
    types          text[],                -- NULL: every type; else the expanded filter
    types_spec     text,                  -- the filter as given, for display
    account_id     uuid,                  -- NULL: every account (and chain events)
    secret         text        NOT NULL,
    start_position bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The journal. `n` numbers each subscriber's entries from 1, in the order they took the
-- subscriber's cursor row lock, so folding by (subscriber_id, n) replays them exactly.
-- kind: created | attempt | caught_up | replay | enable | delete.
CREATE TABLE delivery_attempts (
    subscriber_id   uuid        NOT NULL REFERENCES subscribers,
    n               integer     NOT NULL,
    kind            text        NOT NULL,
    epoch           integer     NOT NULL,  -- the cursor's epoch the writer acted on
    position        bigint,                -- event delivered / cursor target
    event_id        uuid,
    attempt         integer,               -- 1 for the first try of this position
    status_code     integer,               -- HTTP status, NULL when no response
    error           text,                  -- why it failed, NULL on success
    latency_ms      integer,
    outcome         text,                  -- delivered | failed | gone (attempts only)
    next_attempt_at timestamptz,           -- when a failed attempt is retried; NULL: spent
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, n)
);

CREATE FUNCTION delivery_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER subscribers_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON subscribers
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_refuse_change();
CREATE TRIGGER delivery_attempts_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON delivery_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_refuse_change();
