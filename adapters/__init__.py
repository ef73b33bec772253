"""anyio I/O around the sans-IO engine."""
