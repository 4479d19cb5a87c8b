-- The delivery service's public view of each group (openmls PublicGroup: ratchet tree,
-- group context, transcript hash, confirmation tag; no secret), against which every
-- commit is verified, and who made the last accepted commit (a retry is recognised
-- only from that device). Groups registered before this have none and take no commit.
ALTER TABLE groups ADD COLUMN public_state BLOB;
ALTER TABLE groups ADD COLUMN last_commit_sender TEXT;
