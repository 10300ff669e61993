"""What the user gives: the config, and the table read into validated rows (cells, templates, variations)."""
