"""Process set-up for the service, and the app factory each uvicorn worker calls.

The serving image installs neither pandas nor scikit-learn, and LightGBM runs without them; but
LightGBM imports both whenever they are installed (about 1.5 s and 100 MB per process). A
development environment has them, so a service process hides them before LightGBM loads and
behaves, and measures, like the image. OpenMP gets one thread per worker: predictions run with
`num_threads=1`, and idle OpenMP threads busy-waiting against request handling halve
single-record throughput.
"""

from __future__ import annotations

import gc
import os
import signal

from tabml.lean_imports import hide_optional_libraries

#: Optional LightGBM integrations the service never uses.
UNUSED_OPTIONAL_LIBRARIES = ("pandas", "sklearn", "pyarrow")


def prepare_process() -> None:
    """Call first thing in a service process (before LightGBM is imported)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    hide_optional_libraries(*UNUSED_OPTIONAL_LIBRARIES)


def freeze_loaded_objects() -> None:
    """Move everything loaded so far (modules, model, schemas) out of the garbage collector's
    view, so collections during requests scan only request garbage (shorter pauses, better p99).
    """
    gc.collect()
    gc.freeze()


def create_app_from_env():  # returns FastAPI, imported lazily on purpose
    """uvicorn factory (`tabml.serving.worker:create_app_from_env`): settings from TABML_*."""
    prepare_process()
    # Until the app handles it (its lifespan), a reload signal must not end a starting worker:
    # it is reading the files from disk anyway (`tabml.serving.supervisor`).
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from tabml.serving.app import create_app

    app = create_app()
    freeze_loaded_objects()
    return app
