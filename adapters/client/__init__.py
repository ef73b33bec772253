"""Client I/O: the public API, the signaling socket, the LiveKit room and video sources."""
