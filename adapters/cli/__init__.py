"""The ``leanjoin`` command line: connect, demo, serve, check, diagrams."""
