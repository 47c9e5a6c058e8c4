"""Recovery pages: replays, bulk replays, re-drive and dead letters."""
