"""The Dragon backend: a Dragon runtime per partition (backend.py), the executor that runs
inside it (executor.py), the messages between them, and the `/dev/shm` janitor."""
