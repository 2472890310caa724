-- Cursors of the Bitcart-compatible endpoint (src/http/bitcart.rs): how far each client has
-- been given the log, so a poller or a reconnecting websocket resumes where it left off
-- (the real daemon forgets). Operational state, not a projection: it records deliveries,
-- which the log cannot know; a lost row only means that client starts again at the head.
CREATE TABLE bitcart_cursors (
    client     text        NOT NULL,  -- the Basic-auth user name
    wallet     text        NOT NULL,  -- the xpub the client named; '' for none (every wallet)
    position   bigint      NOT NULL,  -- the last event delivered (or passed over)
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, wallet)
);
