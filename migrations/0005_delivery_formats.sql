-- Delivery formats and targets (issue 6): a subscriber is delivered in the format its
-- receivers already speak, to a URL or, when the operator enables script handlers, to a
-- command run once per event. Still append-only (the 0002 triggers): ADD COLUMN with a
-- default writes no rows.
--   format       standard (Standard Webhooks JSON) | cryptoassets (txupdate form POST)
--                | ipn (Crypto IPN form POST, acknowledged by an echo)
--   command      argv of a script handler; exactly one of url and command is set
--   address      ipn: the one address whose deposits are notified
--   max_confirms ipn: no notification for a deposit beyond this many confirmations
-- For ipn subscribers `secret` holds the `ipn_auth` shared secret.
ALTER TABLE subscribers
    ADD COLUMN format text NOT NULL DEFAULT 'standard'
        CHECK (format IN ('standard', 'cryptoassets', 'ipn')),
    ADD COLUMN command text[],
    ADD COLUMN address text,
    ADD COLUMN max_confirms integer,
    ALTER COLUMN url DROP NOT NULL,
    ADD CONSTRAINT subscribers_one_target CHECK ((url IS NULL) <> (command IS NULL)),
    ADD CONSTRAINT subscribers_ipn CHECK
        ((format = 'ipn') = (address IS NOT NULL AND max_confirms IS NOT NULL));

CREATE INDEX subscribers_address ON subscribers (address) WHERE address IS NOT NULL;
