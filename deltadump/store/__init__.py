"""deltadump.store: the backup folder's format and its pure rules (naming, manifest records)."""
