"""What every stage shares: exit codes, logs, fault points, content hashes, storage locations."""
