"""deltadump.cli: argument parsing and rendering; the only place that prints or exits."""
