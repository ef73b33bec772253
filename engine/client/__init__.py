"""The client role: one user session's connect attempts, their ack watch and retries."""
