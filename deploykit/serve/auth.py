"""API keys and TLS: who may call the service, and its certificate, checked before it serves.

**Keys.** ``DEPLOYKIT_API_KEYS`` (comma-separated, several for rotation) and/or the file named by
``DEPLOYKIT_API_KEYS_FILE`` (one key per line, ``#`` comments; what a Kubernetes Secret mounts).
When either is set, every request needs a key, except the probes (``/livez``, ``/readyz``,
``/v2/health/live``, ``/v2/health/ready``: Kubernetes, KServe and ``tritonclient.is_server_ready``
call them without one) and ``/metrics`` unless ``DEPLOYKIT_PROTECT_METRICS`` is on. A key is
accepted as ``Authorization: Bearer KEY`` (what ``openai`` sends; ``tritonclient``, ``curl`` and
``bench online`` send the same header) or ``X-API-Key: KEY``. Keys are compared in constant time
(``hmac.compare_digest`` on their SHA-256 digests, with every key compared whatever matched),
and no key, good or bad, is ever logged or put in a message. Set but empty, or a key file that
is missing, unreadable or holds no key: the service refuses to start (exit 2): it never serves
without auth by accident.

**TLS.** ``DEPLOYKIT_SSL_CERTFILE`` and ``DEPLOYKIT_SSL_KEYFILE`` go to BentoML's own SSL settings
(uvicorn serves HTTPS); both or neither, and the pair must load (exit 2 otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

from typing import TYPE_CHECKING

from deploykit.errors import BadInputError

if TYPE_CHECKING:
    from deploykit.config import ServiceConfig

KEYS_ENV = "DEPLOYKIT_API_KEYS"
# Paths any caller may reach: the probes (Kubernetes, KServe, tritonclient.is_server_ready).
PROBES = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})


class Guard:
    """The accepted keys (as SHA-256 digests) and the paths that need one.

    Args:
        keys: The keys.
        protect_metrics: Whether ``/metrics`` needs a key too.
    """

    def __init__(self, keys: Iterable[str], protect_metrics: bool = False) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        if not self._digests:
            raise ValueError("a Guard needs at least one key")
        self.open = PROBES if protect_metrics else PROBES | {"/metrics"}

    def needs_key(self, path: str) -> bool:
        return path not in self.open

    def allows(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the request's headers carry one of the keys (constant time in the key)."""
        given = None
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key" and given is None:
                given = value.strip()
        if not given:
            return False
        digest = hashlib.sha256(given).digest()
        found = False
        for key in self._digests:  # every key compared: the time does not say which one matched
            found |= hmac.compare_digest(digest, key)
        return found


def read_keys(environ: Mapping[str, str], keys_file: str | None) -> list[str] | None:
    """The API keys from ``DEPLOYKIT_API_KEYS`` and the key file, or None when neither is set.

    Raises:
        BadInputError: Set but empty, or a key file that is missing, unreadable or holds no key
            (the message names the variable or file, never a key).
    """
    inline = environ.get(KEYS_ENV)
    if inline is None and not keys_file:
        return None
    keys: list[str] = []
    if inline is not None:
        keys += [k.strip() for k in inline.split(",") if k.strip()]
        if not keys:
            raise BadInputError(f"{KEYS_ENV} is set but holds no key; give one or more keys, comma-separated, "
                                "or unset it to serve without API keys")
    if keys_file:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"the API key file {keys_file} (DEPLOYKIT_API_KEYS_FILE) cannot be read "
                                f"({type(exc).__name__}); mount the Secret there or fix the path") from None
        from_file = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise BadInputError(f"the API key file {keys_file} (DEPLOYKIT_API_KEYS_FILE) holds no key; "
                                "write one key per line")
        keys += from_file
    bad = [i for i, k in enumerate(keys) if any(c.isspace() or c == "," for c in k) or not k.isprintable()]
    if bad:
        raise BadInputError(f"API key number {bad[0] + 1} holds spaces, commas or unprintable characters; "
                            "use keys of letters, digits and punctuation")
    return keys


def guard(settings: ServiceConfig, environ: Mapping[str, str] | None = None) -> Guard | None:
    """The service's ``Guard`` from its settings and environment (None: no keys, no auth).

    Raises:
        BadInputError: As ``read_keys``.
    """
    keys = read_keys(os.environ if environ is None else environ, settings.api_keys_file)
    if keys is None:
        return None
    return Guard(keys, settings.protect_metrics)


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Refuse a TLS setting that cannot serve: one file without the other, a missing file, or a
    certificate and key that do not load as a pair.

    Raises:
        BadInputError: Naming the setting and the file.
    """
    if certfile is None and keyfile is None:
        return
    if not certfile or not keyfile:
        raise BadInputError("TLS needs both --ssl-certfile and --ssl-keyfile (DEPLOYKIT_SSL_CERTFILE, "
                            "DEPLOYKIT_SSL_KEYFILE); give both, or neither to serve plain HTTP")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not Path(path).is_file():
            raise BadInputError(f"{flag} {path} is not a file; give the PEM file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise BadInputError(f"the certificate {certfile} and key {keyfile} do not load as a TLS pair "
                            f"({exc.__class__.__name__}: {exc.args[-1] if exc.args else exc}); give a PEM "
                            "certificate and its private key") from None
