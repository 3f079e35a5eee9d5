"""Persistent function workers (worker.py) and the pool that feeds them (pool.py): how
the built-in and Dragon backends run plain Python functions. The messages between them
are in protocol.py; calls.py turns a call's outcome into a result, for the workers and
the Dragon executor's pool alike."""
