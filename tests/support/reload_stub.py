"""A stand-in for tabml-serve's reload interface, until the service has it: `POST /admin/reload`
(token from TABML_ADMIN_TOKEN; 401 for a wrong one, 404 when none is configured) and SIGHUP.
Each reload appends a line to a record file ("http" or "sighup"), so a test can see it arrive.

    python tests/support/reload_stub.py PORT RECORD_FILE
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STUB = Path(__file__)


def command(port: int, record: Path) -> list[str]:
    return [sys.executable, str(STUB), str(port), str(record)]


def reloads(record: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The reloads recorded so far, once there are at least `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = record.read_text().split() if record.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{record} has not recorded {count} reloads")


def serve(port: int, record: Path) -> None:
    token = os.environ.get("TABML_ADMIN_TOKEN", "")

    def reloaded(how: str) -> None:
        with open(record, "a") as out:
            out.write(how + "\n")

    signal.signal(signal.SIGHUP, lambda *_: reloaded("sighup"))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/health" else 404, {"status": "ok"})

        def do_POST(self) -> None:
            if self.path != "/admin/reload" or not token:
                self._answer(404, {"error": "not found"})
            elif self.headers.get("Authorization") != f"Bearer {token}":
                self._answer(401, {"error": "invalid admin token"})
            else:
                reloaded("http")
                self._answer(200, {"reloaded": True})

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
