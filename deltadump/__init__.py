"""deltadump: safe, restorable, delta-friendly PostgreSQL backups.

The package is layered; lower layers never import upper ones:
errors, fsio -> rsync -> pg, config -> store -> jobs -> cli.
"""

__version__ = "0.1.0"
