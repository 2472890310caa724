-- Secret rotation (issue 15): POST /v1/subscribers/{id}/rotate-secret appends a row here
-- (subscribers, like the journal, is append-only). A subscriber signs with the secret of
-- its latest rotation (its creation's `subscribers.secret` before any), and also with that
-- rotation's `previous_secret` until `previous_valid_until`: Standard Webhooks allows
-- several space-separated signatures, so a receiver can switch whenever it likes.
-- (0010 and 0011 are kept for the read-replica and delivery work of issue 14.)
CREATE TABLE subscriber_secrets (
    subscriber_id        uuid        NOT NULL REFERENCES subscribers,
    rotation             integer     NOT NULL,
    secret               text        NOT NULL,
    previous_secret      text        NOT NULL,
    previous_valid_until timestamptz NOT NULL,
    rotated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, rotation)
);
CREATE TRIGGER subscriber_secrets_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON subscriber_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_refuse_change();
