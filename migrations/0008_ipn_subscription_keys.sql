-- /btc_ipn is idempotent under concurrency (issue 13): the same address, url and
-- max_confirms subscribe once however many identical calls race (the existence check
-- alone, outside the creating transaction, let 30 calls create up to 19 subscribers).
-- `subscribers` is append-only and a deleted subscription may be made again, so the key
-- has a table of its own naming the subscriber holding it: a call inserts the key with
-- its new subscriber in one transaction (`ON CONFLICT`: concurrent calls wait on the
-- key, then find it held and create nothing), and takes the key over only when its
-- holder was deleted. Subscribers made through POST /v1/subscribers hold no key.
CREATE TABLE ipn_subscription_keys (
    address       text    NOT NULL,
    url           text    NOT NULL,
    max_confirms  integer NOT NULL,
    subscriber_id uuid    NOT NULL REFERENCES subscribers,
    PRIMARY KEY (address, url, max_confirms)
);
