"""The output folder: its layout, lock, manifest schema, part logs, merged manifest, repair and sweeping."""
