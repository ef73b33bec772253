"""Server I/O: the reference server, its LiveKit double and the echo model."""
