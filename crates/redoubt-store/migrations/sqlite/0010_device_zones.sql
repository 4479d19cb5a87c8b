-- The zones each device last reported being inside (of those the organization
-- defines), kept with its latest report, so lists filter and count by zone without
-- reading every report.
CREATE TABLE device_zones (
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    zone       TEXT    NOT NULL,
    PRIMARY KEY (device_id, zone)
);
CREATE INDEX device_zones_zone ON device_zones (zone);

INSERT INTO device_zones (device_id, zone)
    SELECT DISTINCT d.id, z.value FROM devices d, json_each(d.last_report, '$.zones') z
    WHERE d.last_report IS NOT NULL AND z.value IN (SELECT name FROM zones);
