-- API keys: long-lived bearer tokens `cvk_<hex id>_<secret>`. Only a salted SHA-256 of the secret is kept;
-- the token itself is shown once, at creation. Revoked keys stay (revoked_at set) as an audit trail.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    sub          text NOT NULL,
    role         text NOT NULL CHECK (role IN ('user', 'admin')),
    prefix       text NOT NULL UNIQUE,
    salt         bytea NOT NULL,
    hash         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_created_idx ON api_keys (created_at DESC, id DESC);
