-- As SQLite's 0010.
CREATE TABLE device_zones (
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    zone       TEXT    NOT NULL,
    PRIMARY KEY (device_id, zone)
);
CREATE INDEX device_zones_zone ON device_zones (zone);

INSERT INTO device_zones (device_id, zone)
    SELECT DISTINCT d.id, z.value FROM devices d,
        json_array_elements_text(CAST(d.last_report AS json) -> 'zones') AS z(value)
    WHERE d.last_report IS NOT NULL AND z.value IN (SELECT name FROM zones);
