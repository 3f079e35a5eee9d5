"""The Flux backend: a Flux instance per partition (backend.py), driven through Flux's
Python API; tasks as jobs and job events as task events (jobs.py, pure).

Importing this package loads nothing of Flux: `unavailable()` says whether it can run.
Flux is found on PATH, else under `FLUX_PREFIX` or /opt/flux (where
../shared/flux/install-flux.sh puts it); its Python bindings are importable as they
are, or are taken from that install (`<prefix>/lib/flux/pythonX.Y`), so a venv needs
only their pure dependencies (`pip install 'pilotfish[flux]'`: ply, pyyaml, cffi).
"""

from __future__ import annotations

import os
import shutil
import sys

INSTALL_HINT = ("install Flux (flux-core) with its Python bindings, e.g. `module load "
                "flux`, or here `../shared/flux/install-flux.sh` (into /opt/flux), and "
                "`pip install 'pilotfish[flux]'`")


def flux_command() -> str | None:
    """The `flux` program: on PATH, else `$FLUX_PREFIX/bin/flux` or /opt/flux/bin/flux."""
    found = shutil.which("flux")
    if found:
        return found
    for prefix in (os.environ.get("FLUX_PREFIX"), "/opt/flux"):
        if prefix and os.access(os.path.join(prefix, "bin", "flux"), os.X_OK):
            return os.path.join(prefix, "bin", "flux")
    return None


def bindings_path(command: str) -> str:
    """Where the install holding `command` keeps its bindings for this Python."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(command)))
    return os.path.join(prefix, "lib", "flux", f"python{sys.version_info[0]}.{sys.version_info[1]}")


def unavailable() -> str | None:
    """None if Flux can be used here (its bindings then import), else why not."""
    command = flux_command()
    if command is None:
        return f"no `flux` command on PATH, in $FLUX_PREFIX/bin or /opt/flux/bin: {INSTALL_HINT}"
    try:
        import flux
    except ImportError:
        path = bindings_path(command)
        if not os.path.isdir(path) or path in sys.path:
            return (f"the flux Python bindings cannot be imported, and {command}'s install "
                    f"has none for this Python at {path}: {INSTALL_HINT}")
        sys.path.append(path)
        try:
            import flux  # noqa: F401
        except (ImportError, OSError) as exc:
            sys.path.remove(path)
            return (f"the flux Python bindings of {path} cannot be imported ({exc}): "
                    f"{INSTALL_HINT}")
    except OSError as exc:  # the bindings without libflux-core raise this
        return f"the flux Python bindings cannot be loaded ({exc}): {INSTALL_HINT}"
    return None
