"""Tell a running tabml-serve to load its bundle again from disk, after the bundle changed.

Two ways, both answered by the service by re-reading and verifying the bundle (a failed reload
keeps the old one): `POST <url>/admin/reload` with `Authorization: Bearer $TABML_ADMIN_TOKEN`
(401 for a wrong token, 404 when the service has no token configured), for a service behind a
network; or SIGHUP to its main process, for one on the same host or in the same pod.
"""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request

from tabml.errors import TabmlError

ADMIN_TOKEN_ENV = "TABML_ADMIN_TOKEN"
RELOAD_PATH = "/admin/reload"


class ReloadError(TabmlError):
    """The service could not be asked to reload, or refused; the message says which."""


def admin_token() -> str:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise ReloadError(f"--reload-url needs the service's admin token in {ADMIN_TOKEN_ENV}")
    return token


def reload_over_http(base_url: str, token: str, timeout: float = 60.0) -> str:
    """POST the reload; return the service's answer (its body)."""
    url = base_url.rstrip("/") + RELOAD_PATH
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip()[:500]
        if exc.code == 401:
            problem = f"rejected the admin token from {ADMIN_TOKEN_ENV} (401)"
        elif exc.code == 404:
            problem = (
                f"answers 404: no admin token is configured on the service ({ADMIN_TOKEN_ENV} "
                "unset there), so reloading over HTTP is off"
            )
        else:
            problem = f"answers HTTP {exc.code}: {body or exc.reason}"
        raise ReloadError(f"{url} {problem}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ReloadError(f"{url} is unreachable ({getattr(exc, 'reason', exc)})") from None


def reload_by_signal(pid: int) -> None:
    """Send SIGHUP to the service's main process."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid} to send SIGHUP to") from None
    except PermissionError:
        raise ReloadError(f"not allowed to signal process {pid}") from None
