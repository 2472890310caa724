-- Read models folded from the event log by src/projections/. Every table here can be
-- dropped and rebuilt from `events`; each projection keeps its checkpoint position.

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name     text   PRIMARY KEY,
    position bigint NOT NULL
);

-- account.created, and for accounts with a descriptor address.watched (index) and
-- address.handed_out: how far the derived addresses are watched and handed out.
CREATE TABLE IF NOT EXISTS accounts (
    account_id           uuid     PRIMARY KEY,
    label                text     NOT NULL,
    credit_confirmations integer  NOT NULL,
    stream_version       integer  NOT NULL,
    created_position     bigint   NOT NULL,
    descriptor           text,                       -- NULL: addresses are added one by one
    lookahead            integer,
    watched_to           integer  NOT NULL DEFAULT 0, -- indexes 0..watched_to are watched
    handed_out           integer  NOT NULL DEFAULT 0  -- indexes 0..handed_out were handed out
);

-- address.watched
CREATE TABLE IF NOT EXISTS addresses (
    address          text    PRIMARY KEY,
    account_id       uuid    NOT NULL,
    script_pubkey    bytea   NOT NULL UNIQUE,
    position         bigint  NOT NULL,
    derivation_index integer                         -- for accounts with a descriptor
);
CREATE INDEX IF NOT EXISTS addresses_account ON addresses (account_id);
CREATE INDEX IF NOT EXISTS addresses_position ON addresses (position);

-- block.connected / block.disconnected: the active chain as the follower has stored it.
CREATE TABLE IF NOT EXISTS chain_blocks (
    height    integer PRIMARY KEY,
    hash      text    NOT NULL,
    prev_hash text    NOT NULL,
    time      bigint  NOT NULL
);

CREATE TABLE IF NOT EXISTS chain_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    start_height   integer NOT NULL,
    stream_version integer NOT NULL
);

-- deposit.*: the latest state of every deposit stream.
CREATE TABLE IF NOT EXISTS deposits (
    txid                 text     NOT NULL,
    vout                 integer  NOT NULL,
    account_id           uuid     NOT NULL,
    address              text     NOT NULL,
    amount_sats          bigint   NOT NULL,
    confirmations        integer  NOT NULL,
    block_hash           text,
    block_height         integer,
    credited             boolean  NOT NULL,
    credit_confirmations integer  NOT NULL,
    status               text     NOT NULL,
    stream_version       integer  NOT NULL,
    first_position       bigint   NOT NULL,
    last_position        bigint   NOT NULL,
    inputs               text     NOT NULL DEFAULT '', -- outpoints its tx spends, comma-separated
    PRIMARY KEY (txid, vout)
) WITH (fillfactor = 70);  -- room for HOT updates: open deposits change every block
CREATE INDEX IF NOT EXISTS deposits_open ON deposits (status) WHERE status NOT IN ('final', 'dropped', 'replaced');
CREATE INDEX IF NOT EXISTS deposits_block ON deposits (block_hash);
CREATE INDEX IF NOT EXISTS deposits_account ON deposits (account_id, first_position);
CREATE INDEX IF NOT EXISTS deposits_address ON deposits (address, first_position);

-- withdrawal.*: the latest state of every withdrawal stream.
CREATE TABLE IF NOT EXISTS withdrawals (
    txid           text     PRIMARY KEY,
    account_id     uuid     NOT NULL,
    amount_sats    bigint   NOT NULL,   -- what left the account, the fee included
    fee_sats       bigint,
    inputs         text     NOT NULL,   -- outpoints it spends, comma-separated
    confirmations  integer  NOT NULL,
    block_hash     text,
    block_height   integer,
    status         text     NOT NULL,
    source         text     NOT NULL,
    stream_version integer  NOT NULL,
    first_position bigint   NOT NULL,
    last_position  bigint   NOT NULL
);
CREATE INDEX IF NOT EXISTS withdrawals_open ON withdrawals (status) WHERE status NOT IN ('final', 'dropped', 'replaced');
CREATE INDEX IF NOT EXISTS withdrawals_account ON withdrawals (account_id, first_position);

-- Balances per account, moved by the difference each changed deposit makes (the fold's
-- deposits statement): equal to summing `deposits` by the documented rules.
CREATE TABLE IF NOT EXISTS balances (
    account_id       uuid   PRIMARY KEY,
    credited_sats    bigint NOT NULL,
    pending_sats     bigint NOT NULL,
    unconfirmed_sats bigint NOT NULL
);
