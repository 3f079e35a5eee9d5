"""The Flux backend: a Flux instance per partition (backend.py), driven through Flux's
Python API; tasks as jobs and job events as task events (jobs.py, pure)."""
