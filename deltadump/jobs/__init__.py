"""deltadump.jobs: the use cases (backup, restore, verify, init, demo) wiring the lower layers.

Jobs never print: they report through a Reporter, and raise DeltadumpError subclasses."""
