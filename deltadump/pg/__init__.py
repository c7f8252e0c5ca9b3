"""deltadump.pg: finds and runs PostgreSQL's programs (pg_dump, pg_restore, psql); version checks;
dump validation. Knows nothing of backup folders or rotation."""
