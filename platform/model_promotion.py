"""Promotion of a registered version: move an alias (default ``champion``) and record who, when, why and the
previous holder as ``celltune.promoted.<alias>.*`` tags on the promoted version. A version whose validation
``seg_mean`` is below the current holder's is refused unless forced, so a worse model never replaces a better one
by accident.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
_VERSION = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: ``moved`` is False when the alias already pointed at the version."""

    name: str
    alias: str
    version: str
    previous: str | None
    moved: bool
    message: str


def _score(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): getpass raises KeyError/OSError depending on Python
        return os.environ.get("USER") or "unknown"


def promote(name: str, version: str, *, alias: str = DEFAULT_ALIAS, force: bool = False, reason: str = "",
            tracking_uri: str | None = None, user: str | None = None, now: datetime | None = None) -> Promotion:
    """Move ``alias`` of registered model ``name`` to ``version`` and record the promotion on that version.

    Args:
        name: registered model name.
        version: version number (digits).
        alias: the alias to move, created when the model has none by that name.
        force: promote even when the version's ``celltune.seg_mean`` is below the current holder's or missing.
        reason: free text stored as ``celltune.promoted.<alias>.reason``.
        tracking_uri: MLflow tracking (and registry) URI; default ``default_tracking_uri()``.
        user, now: who and when to record (default: the login name and the current UTC time).

    Raises:
        UserInputError: unknown model or version, a bad alias, a version without ``celltune.seg_mean``, or a
            version scoring below the current holder (each without ``force`` where forcing applies).
    """
    from mlflow.exceptions import MlflowException

    from celltune.platform.model_registry import resolve_ref
    from celltune.platform.model_registry_views import PROMOTED_PREFIX, registry_client, require_model, version_view
    from celltune.platform.tracking import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    version = str(version).strip()
    if not _VERSION.match(version):
        raise UserInputError(f"version {version!r}: must be a version number such as 3")
    version = str(int(version))
    if not alias.strip():
        raise UserInputError("--alias: must not be empty")
    client = registry_client(tracking_uri)
    registered = require_model(client, name)
    resolve_ref(f"models:/{name}/{version}", tracking_uri=tracking_uri)  # unknown version -> one-line error
    target = version_view(client, name, version)
    holder_number = (registered.aliases or {}).get(alias)
    holder = None if holder_number is None else version_view(client, name, holder_number)
    if holder is not None and holder.version == target.version:
        return Promotion(name, alias, version, version, moved=False,
                         message=f"{alias} of {name} already points to version {version}; nothing changed")
    if target.seg_mean is None and not force:
        raise UserInputError(f"{name} version {version} has no celltune.seg_mean tag to compare; pass --force to "
                             f"promote it to {alias} anyway")
    below = holder is not None and None not in (holder.seg_mean, target.seg_mean) and \
        target.seg_mean < holder.seg_mean
    if below and not force:
        raise UserInputError(f"refusing to move {alias} from version {holder.version} (seg_mean "
                             f"{_score(holder.seg_mean)}) to version {version} (seg_mean {_score(target.seg_mean)}); "
                             "pass --force to promote anyway")
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:  # e.g. reserved aliases such as "latest" or "v3"
        raise UserInputError(f"--alias {alias!r}: {' '.join(exc.message.split())}") from None
    at = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    previous = "" if holder is None else str(holder.version)
    record = {"by": user or _user(), "at": at, "reason": reason, "previous": previous}
    for key, value in record.items():
        client.set_model_version_tag(name, version, f"{PROMOTED_PREFIX}{alias}.{key}", value)
    logger.info("promoted %s version %s to %s (previous %s)", name, version, alias, previous or "none")
    if holder is None:
        message = f"{alias} of {name} now points to version {version} (seg_mean {_score(target.seg_mean)})"
    else:
        message = (f"moved {alias} of {name} from version {holder.version} (seg_mean {_score(holder.seg_mean)}) "
                   f"to version {version} (seg_mean {_score(target.seg_mean)})")
    if below or target.seg_mean is None:
        message += " (forced)"
    return Promotion(name, alias, version, previous or None, moved=True, message=message)
