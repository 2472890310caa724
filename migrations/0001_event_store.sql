-- The event store: one append-only, gapless, hash-chained log. Everything else in the
-- database is a projection of it (see projections/) and can be rebuilt from it.

CREATE TABLE events (
    -- Gapless and in commit order: assigned from log_head, whose row lock is held until
    -- the appending transaction commits, so `WHERE position > $cursor` never skips.
    position       bigint      PRIMARY KEY CHECK (position > 0),
    -- UUIDv5 of "<stream>/<stream_version>": a repeated append is a conflict, never a duplicate.
    event_id       uuid        NOT NULL UNIQUE,
    stream         text        NOT NULL,
    stream_version integer     NOT NULL CHECK (stream_version >= 0),
    type           text        NOT NULL,
    schema_version smallint    NOT NULL,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL,
    -- SHA-256 over prev_hash and the canonical event (src/store/hash.rs).
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream, stream_version)
);

-- The single row every append locks: next position and the hash chain's head.
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL,
    hash      bytea   NOT NULL
);
INSERT INTO log_head (position, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Statement-level, so even an UPDATE or DELETE that matches no row is refused.
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
