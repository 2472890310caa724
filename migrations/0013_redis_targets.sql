-- Redis Streams as a delivery target (issue 15): instead of a URL or a command, a
-- subscriber's events are XADDed to a stream, each with the entry id `<position>-1`, so a
-- repeat after a crash is refused by Redis (its id is not above the stream's top) and the
-- stream holds every event once, in order. Still append-only (the 0002 triggers): ADD
-- COLUMN without a default writes no rows.
--   redis_url     redis://[user[:password]@]host[:port][/db]; its password is shown
--                 redacted, never in full (like `secret`, it was given at creation)
--   redis_stream  the stream's key
--   redis_maxlen  XADD … MAXLEN ~ n: Redis trims the stream to about n entries; NULL: never
-- Exactly one target: a URL, a command, or Redis (url and stream together, format
-- standard: the other formats are HTTP forms).
ALTER TABLE subscribers
    ADD COLUMN redis_url text,
    ADD COLUMN redis_stream text,
    ADD COLUMN redis_maxlen bigint CHECK (redis_maxlen > 0),
    DROP CONSTRAINT subscribers_one_target,
    ADD CONSTRAINT subscribers_redis_whole CHECK
        ((redis_url IS NULL) = (redis_stream IS NULL)
         AND (redis_maxlen IS NULL OR redis_url IS NOT NULL)
         AND (redis_url IS NULL OR format = 'standard')),
    ADD CONSTRAINT subscribers_one_target CHECK
        ((url IS NOT NULL)::int + (command IS NOT NULL)::int + (redis_url IS NOT NULL)::int = 1);
