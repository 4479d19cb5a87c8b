-- The newest inventory a device reported (model, system, storage, battery: the
-- `Inventory` of its compliance reports, as JSON) and when the report carrying it was
-- received. Written only by reports that carry one; NULL before the first.
ALTER TABLE devices ADD COLUMN inventory TEXT, ADD COLUMN inventory_at BIGINT;
