"""The server role: one signaling connection, the shared admission queue, the request pipeline."""
