"""leanjoin.engine: the pure, sans-IO core of the lean-join protocol."""
