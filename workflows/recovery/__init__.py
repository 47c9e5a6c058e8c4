"""Recovery: replays, re-drive of stored events and dead letters."""
