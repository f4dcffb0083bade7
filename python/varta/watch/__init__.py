"""varta-watch: the observer daemon (CLI, poll loop, recovery, audit log, exporters)."""
