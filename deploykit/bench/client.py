"""What every ``bench online`` client sends with its requests: the API key, when the service needs one.

The key comes from ``DEPLOYKIT_API_KEY`` (one key; the service's ``DEPLOYKIT_API_KEYS`` may hold
several), never from a flag, so it stays out of the command line and the benchmark's report.
"""

from __future__ import annotations

import os

KEY_ENV = "DEPLOYKIT_API_KEY"


def headers() -> dict[str, str]:
    """``Authorization: Bearer KEY`` when ``DEPLOYKIT_API_KEY`` is set, else nothing."""
    key = os.environ.get(KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}
