"""Small helpers shared by the flows: fail fast and clearly when a service is down."""

from __future__ import annotations

import os
import urllib.error
import urllib.request


def check_prefect_api(timeout_s: float = 3.0) -> str | None:
    """None when ``PREFECT_API_URL`` is unset (ephemeral API) or answers; else a clear message.

    Without this check a flow started against a dead server retries its HTTP calls for minutes
    before failing; an operator wants one line saying which URL is down.
    """
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return None
            return f"Prefect server at {url} answered HTTP {resp.status} on /health"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return (
            f"Prefect server at {url} is unreachable ({reason}). Start it with "
            "`prefect server start` or unset PREFECT_API_URL to run without a server."
        )
