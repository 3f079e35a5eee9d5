"""Persistent function workers (worker.py) and the pool that feeds them (pool.py): how
the built-in and Dragon backends run plain Python functions."""
