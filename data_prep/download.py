"""Download an official CTC training archive by dataset name: resumable, verified, unpacked atomically.

Archives are large (hundreds of MB to GBs) and the CTC server is far away for many users, so a broken
connection must not cost the whole download: bytes go to ``<out>/.<name>.zip.part`` and a rerun continues
with an HTTP Range request. Before anything is unpacked, the archive is checked against the expected
sha256 (when given) and always against the zip's own CRC-32 of every member. The dataset is unpacked into
a hidden folder beside the target and renamed to ``<out>/<name>``, so that folder is either complete or
absent.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from celltune.data_prep.common import UserInputError, did_you_mean

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.celltrackingchallenge.net/training-datasets"

# Training datasets of the CTC (2D and 3D, real and simulated).
KNOWN_DATASETS = (
    "BF-C2DL-HSC", "BF-C2DL-MuSC", "DIC-C2DH-HeLa", "Fluo-C2DL-Huh7", "Fluo-C2DL-MSC", "Fluo-N2DH-GOWT1",
    "Fluo-N2DH-SIM+", "Fluo-N2DL-HeLa", "PhC-C2DH-U373", "PhC-C2DL-PSC",
    "Fluo-C3DH-A549", "Fluo-C3DH-A549-SIM", "Fluo-C3DH-H157", "Fluo-C3DL-MDA231", "Fluo-N3DH-CE", "Fluo-N3DH-CHO",
    "Fluo-N3DH-SIM+", "Fluo-N3DL-DRO", "Fluo-N3DL-TRIC", "Fluo-N3DL-TRIF",
)
NAME_PATTERN = re.compile(r"^(Fluo|DIC|PhC|BF)-[CN][23]D[HL]-[A-Za-z0-9+\-]+$")

COMPLETE_MARKER = ".celltune-download"  # written into the dataset folder before it is renamed into place
_CHUNK = 1 << 20


def validate_name(name: str) -> str:
    """Return ``name`` if it is a known CTC dataset or follows the CTC naming pattern, else raise.

    Raises:
        UserInputError: the name is neither, or differs from a known name only in case (the server's
            URLs are case-sensitive), with the closest known names as suggestions.
    """
    if name in KNOWN_DATASETS:
        return name
    same = [known for known in KNOWN_DATASETS if known.lower() == name.lower()]
    if same:
        raise UserInputError(f"dataset name {name!r}: names are case-sensitive; did you mean {same[0]!r}?")
    if NAME_PATTERN.match(name):
        logger.info("%s is not a known CTC dataset but follows the naming pattern; trying it", name)
        return name
    hint = f"; {suggestion}" if (suggestion := did_you_mean(name, KNOWN_DATASETS, n=3, cutoff=0.5)) else ""
    raise UserInputError(
        f"dataset name {name!r} is not a CTC dataset (like DIC-C2DH-HeLa: <modality>-<C|N><2|3>D<H|L>-<name>){hint} "
        f"known: {', '.join(sorted(KNOWN_DATASETS))}"
    )


def download_dataset(
    name: str,
    out: Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    sha256: str | None = None,
    show_progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Fetch ``{base_url}/{name}.zip`` and unpack it to ``out / name``; return that folder.

    A partial ``out/.<name>.zip.part`` from an earlier attempt is resumed with an HTTP Range request
    (servers that ignore Range get a fresh download). A connection that breaks mid-transfer is resumed up
    to ``retries`` times. If ``out / name`` already holds a complete dataset it is returned unchanged.

    Args:
        name: CTC dataset name, e.g. ``DIC-C2DH-HeLa``.
        out: folder that receives ``<name>/``; created if missing.
        base_url: where the archives live (the CTC site by default).
        sha256: expected hex digest of the archive; the zip's CRC-32s are checked either way.
        show_progress: show a byte progress bar with ETA on a terminal.
        timeout: seconds to wait for the server on connect and on each read.
        retries: extra attempts after a connection breaks mid-transfer.

    Raises:
        UserInputError: bad name or checksum argument, the target exists with other content, the server
            says the archive is not there (HTTP 4xx), checksum mismatch or corrupt archive.
        ConnectionError: network failure or server error, naming the URL (rerun to resume).
    """
    validate_name(name)
    expected = _check_sha256(sha256)
    out = Path(out)
    target = out / name
    if target.exists():
        if _is_complete(target):
            logger.info("%s is already complete", target)
            return target
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise UserInputError(
                f"{target}: exists and is not a complete download; move it away or delete it to download {name}"
            )
    out.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{urllib.parse.quote(name, safe='+')}.zip"
    part = out / f".{name}.zip.part"

    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout=timeout, show_progress=show_progress)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise ConnectionError(f"{url}: {exc}; rerun to resume from {part.stat().st_size} bytes") from None
            logger.warning("%s: %s; resuming (attempt %d of %d)", url, exc, attempt + 2, retries + 1)

    if expected is not None:
        actual = _sha256(part)
        if actual != expected:
            part.unlink()
            raise UserInputError(
                f"{url}: sha256 mismatch: expected {expected}, got {actual} (deleted the download)"
            )
    _verify_zip(part, url)
    _unpack(part, target, name, show_progress=show_progress)
    part.unlink()
    logger.info("downloaded %s to %s", url, target)
    return target


class _Interrupted(Exception):
    """The transfer broke off after it started; the part file is kept for resuming."""


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise UserInputError(f"sha256 {sha256!r}: expected 64 hex digits")
    return digest


def _is_complete(target: Path) -> bool:
    """Our own finished download, or a folder already in the CTC training layout (01/ with frames, 01_GT/)."""
    if (target / COMPLETE_MARKER).is_file():
        return True
    first = target / "01"
    return first.is_dir() and any(first.glob("t*.tif")) and (target / "01_GT").is_dir()


def _fetch(url: str, part: Path, *, timeout: float, show_progress: bool) -> None:
    """Download ``url`` into ``part``, continuing an existing partial file when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "celltune-download", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https URL built above)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            total = _total_from_content_range(exc.headers.get("Content-Range", ""))
            exc.close()
            if total == have:  # the part file is already the whole archive
                return
            part.unlink()  # stale part larger than the archive: start over
            return _fetch(url, part, timeout=timeout, show_progress=show_progress)
        exc.close()
        if 400 <= exc.code < 500:
            raise UserInputError(f"{url}: HTTP {exc.code} {exc.reason} (check the name and base URL)") from None
        raise ConnectionError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"{url}: {reason}") from None

    with response:
        if response.status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range", ""))
            if start != have:
                raise ConnectionError(f"{url}: server resumed at byte {start}, expected {have}")
            mode = "ab"
        else:  # 200: the server ignored Range (or there was nothing to resume), so start from scratch
            if have:
                logger.info("%s: server does not support resuming; downloading again", url)
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        received = have
        with open(part, mode) as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[1:-5],
            disable=None if show_progress else True,
        ) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # includes timeouts and resets
                raise _Interrupted(f"connection broke after {received} bytes ({exc})") from None
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def _start_from_content_range(value: str) -> int:
    match = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value.strip())
    return int(match.group(1)) if match else -1


def _total_from_content_range(value: str) -> int:
    match = re.search(r"/(\d+)\s*$", value.strip())
    return int(match.group(1)) if match else -1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_zip(part: Path, url: str) -> None:
    """Check every member's CRC-32 and path; a corrupt archive is deleted so the next run starts fresh."""
    problem = None
    try:
        with zipfile.ZipFile(part) as archive:
            bad = archive.testzip()
            if bad is not None:
                problem = f"member {bad} fails its CRC-32 check"
            for info in archive.infolist():
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
                    problem = f"member {info.filename!r} would land outside the dataset folder"
                    break
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        problem = f"not a valid zip archive ({exc})"
    if problem is not None:
        part.unlink(missing_ok=True)
        raise UserInputError(f"{url}: corrupt archive: {problem} (deleted the download; rerun to fetch it again)")


def _unpack(part: Path, target: Path, name: str, *, show_progress: bool) -> None:
    """Extract into a hidden folder beside ``target`` and rename the dataset folder into place."""
    tmp = target.parent / f".{name}.unpack-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with zipfile.ZipFile(part) as archive:
            members = archive.infolist()
            for info in tqdm(members, desc=f"unpack {name}", unit="file", disable=None if show_progress else True):
                archive.extract(info, tmp)
        tops = {PurePosixPath(m.filename).parts[0] for m in members if m.filename.strip("/")}
        # CTC archives hold one top folder named like the dataset; anything else is unpacked as it is.
        content = tmp / name if tops == {name} and (tmp / name).is_dir() else tmp
        (content / COMPLETE_MARKER).write_text(f"{part.name[1:-5]}\n")
        os.rename(content, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
