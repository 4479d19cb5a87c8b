-- The organization whose keys sign what this database holds: the CA fingerprint and
-- the public half of the organization signing key, claimed by the first server that
-- opens the database. A server with other keys (a node whose data directory was not
-- copied from the first one) is refused before it signs anything.
CREATE TABLE organization (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    ca_fingerprint  TEXT    NOT NULL,
    signing_key     TEXT    NOT NULL,
    claimed_at      INTEGER NOT NULL
);
