-- The organization whose keys sign what this database holds: the CA fingerprint and
-- the public half of the organization signing key, claimed by the first server node
-- that opens the database. A node with other keys (its data directory not copied from
-- the first node) is refused before it signs anything.
CREATE TABLE organization (
    id              BIGINT  PRIMARY KEY CHECK (id = 1),
    ca_fingerprint  TEXT    NOT NULL,
    signing_key     TEXT    NOT NULL,
    claimed_at      BIGINT  NOT NULL
);

-- The bytes of the conversations' encrypted files. With several server nodes the
-- database is the one place every node reads: a file uploaded through one node is
-- downloaded through another. (The embedded SQLite server keeps them as files in its
-- data directory.) Deleting the file's record deletes its bytes.
CREATE TABLE blob_contents (
    id      TEXT    PRIMARY KEY REFERENCES blobs (id) ON DELETE CASCADE,
    bytes   BYTEA   NOT NULL
);
