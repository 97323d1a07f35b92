"""`tabml-serve --workers N`: uvicorn's multi-process supervisor, with SIGHUP passed on to every
worker instead of restarting them.

uvicorn's supervisor (0.54, `uvicorn.supervisors.Multiprocess`) answers SIGHUP with a rolling
restart: for each worker it starts a replacement, waits until it is ready, then stops the old
one with SIGTERM. Every worker then loads the bundle again, and the old ones finish the requests
they are answering; but stopping a worker closes its idle keep-alive connections, and a client
that sends its next request on one of them at that moment gets a connection reset (seen: 2
resets in one restart of two workers under a two-thread load loop). A reload
in place has no such window: the worker keeps its connections and swaps its versions between
two requests (`tabml.serving.reload`).

So here SIGHUP to the supervisor is sent on to each live worker, and each reloads in place,
refusing (and still serving the old versions) if the bundle does not verify; the supervisor's
other duties (respawning a worker that died, SIGTERM/SIGINT, SIGTTIN/SIGTTOU) are uvicorn's. A
worker that is still starting ignores SIGHUP (`worker.create_app_from_env`): it is loading the
files from disk anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

from uvicorn import Config
from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger("tabml.serving")

APP_FACTORY = "tabml.serving.worker:create_app_from_env"


class ReloadingMultiprocess(Multiprocess):
    """uvicorn's supervisor; SIGHUP reloads every worker in place (see the module docstring)."""

    def handle_hup(self) -> None:
        pids = [p.pid for p in self.processes if p.pid is not None and p.process.is_alive()]
        log.info("SIGHUP received: passing it to workers %s (each reloads in place)", pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)


def run_workers(workers: int, **options: Any) -> None:
    """What `uvicorn.run(APP_FACTORY, factory=True, workers=workers, **options)` does, with
    `ReloadingMultiprocess` as the supervisor."""
    config = Config(APP_FACTORY, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    ReloadingMultiprocess(config, sockets=[sock]).run()
