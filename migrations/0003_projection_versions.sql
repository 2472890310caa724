-- Which version (a hash of its SQL definition, projections/*.sql) of each projection the
-- live tables were built with. The service compares it at start and rebuilds a changed
-- or missing projection from the log before serving it.
CREATE TABLE projection_versions (
    name       text        PRIMARY KEY,
    version    text        NOT NULL,
    rebuilt_at timestamptz NOT NULL DEFAULT now()
);
