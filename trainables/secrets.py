"""Credentials never leave the process in clear: values of environment variables whose names look like
credentials are masked wherever a config or a message is written (params, model cards, checkpoints, tags), and
passwords in URIs are hidden before a URI is printed or stored."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH)", re.I)
# settings named after a credential without being one (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=...): masking
# their values would blank every "token" in a config
NOT_A_SECRET = re.compile(r"_(MODE|PATH|FILE|DIR|TYPE|ENABLED|URL|URI|HOST|PORT|EXPIRY|EXPIRES|TTL)$", re.I)
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names look like credentials (long enough to be meaningful)."""
    environ = os.environ if environ is None else environ
    return {value for name, value in environ.items()
            if SECRET_NAME.search(name) and not NOT_A_SECRET.search(name) and len(value) >= 4}


def mask_secrets(value: Any, secrets: set[str] | None = None) -> Any:
    """``value`` (a tree of mappings, lists and strings) with every secret value replaced by ``***``."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {key: mask_secrets(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(item, secrets) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
    return value


def redact_uri(uri: str) -> str:
    """``uri`` with the password of ``user:password@host`` replaced by ``***`` (and secret values masked)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return mask_secrets(uri)
    if parts.password is None:
        return mask_secrets(uri)
    host = parts.hostname or ""
    netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return mask_secrets(urlunsplit(parts._replace(netloc=netloc)))
