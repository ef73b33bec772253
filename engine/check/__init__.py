"""Checking the engines: the exhaustive explorer, its invariants and replayable traces."""
