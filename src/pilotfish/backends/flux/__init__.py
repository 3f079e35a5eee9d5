"""The Flux backend: a Flux instance per partition (backend.py), driven through Flux's
Python API; tasks as jobs and job events as task events (jobs.py, pure).

Importing this package loads nothing of Flux: `unavailable()` says whether it can run.
"""

from __future__ import annotations


def unavailable() -> str | None:
    """None if Flux can be used here, else why not."""
    try:
        import flux  # noqa: F401
    except (ImportError, OSError) as exc:  # the bindings without libflux-core raise these
        return (f"the flux Python bindings cannot be imported ({exc}); install Flux "
                "(flux-core) and its bindings, e.g. `module load flux`")
    return None
