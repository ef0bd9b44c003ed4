"""`data download` against a local HTTP server on 127.0.0.1 serving a CTC-layout zip built by the test."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from celltune.data_prep.common import UserInputError
from celltune.data_prep.download import COMPLETE_MARKER, download_dataset
from celltune.data_prep.synth import SynthSpec, generate_dataset

NAME = "Fluo-N2DH-SIM+"  # a '+' in the URL, as on the CTC site


class _Server:
    """Serves ``files`` (URL path -> bytes); honours ``Range: bytes=N-`` unless told not to; logs requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_next_after: int | None = None  # drop the connection after this many body bytes, once
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                data = server.files.get(self.path)
                wanted = self.headers.get("Range")
                if data is None:
                    return self._reply(404, b"not found", wanted)
                match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                if match and server.honour_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        return self._reply(416, b"", wanted, {"Content-Range": f"bytes */{len(data)}"})
                    content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self._reply(206, data[start:], wanted, {"Content-Range": content_range})
                return self._reply(200, data, wanted)

            def _reply(self, status: int, body: bytes, wanted: str | None, headers: dict | None = None) -> None:
                server.requests.append((self.path, wanted, status))
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if server.cut_next_after is not None and status in (200, 206):
                    body, server.cut_next_after = body[: server.cut_next_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/training-datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def serve(self, name: str, data: bytes) -> None:
        self.files[f"/training-datasets/{name}.zip"] = data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SynthSpec(name=NAME, sequences=1, frames=3, size=48, cells=2, gt_every=2)
    return generate_dataset(tmp_path_factory.mktemp("src"), spec, show_progress=False)


@pytest.fixture(scope="module")
def archive(dataset: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:  # stored: bytes easy to corrupt
        for path in sorted(dataset.rglob("*")):
            zf.write(path, f"{NAME}/{path.relative_to(dataset).as_posix()}")
    return buffer.getvalue()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _get(server: _Server, out: Path, name: str = NAME, **kwargs: object) -> Path:
    return download_dataset(name, out, base_url=server.base_url, show_progress=False, timeout=5.0, **kwargs)


def test_full_download_unpacks_the_dataset(server: _Server, archive: bytes, dataset: Path, tmp_path: Path) -> None:
    server.serve(NAME, archive)
    digest = hashlib.sha256(archive).hexdigest()
    path = _get(server, tmp_path, sha256=digest.upper())
    assert path == tmp_path / NAME
    files = _tree(path)
    assert files.pop(COMPLETE_MARKER)
    assert files == _tree(dataset)
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no part file, no temp folder
    assert server.requests == [(f"/training-datasets/{NAME}.zip", None, 200)]
    assert _get(server, tmp_path) == path  # complete already: returned without asking the server
    assert len(server.requests) == 1


def test_resumes_a_partial_download_with_a_range_request(
    server: _Server, archive: bytes, dataset: Path, tmp_path: Path
) -> None:
    server.serve(NAME, archive)
    half = len(archive) // 2
    (tmp_path / f".{NAME}.zip.part").write_bytes(archive[:half])
    path = _get(server, tmp_path, sha256=hashlib.sha256(archive).hexdigest())
    assert server.requests == [(f"/training-datasets/{NAME}.zip", f"bytes={half}-", 206)]
    assert {k: v for k, v in _tree(path).items() if k != COMPLETE_MARKER} == _tree(dataset)


def test_restarts_when_the_server_ignores_range(server: _Server, archive: bytes, tmp_path: Path) -> None:
    server.serve(NAME, archive)
    server.honour_range = False
    (tmp_path / f".{NAME}.zip.part").write_bytes(b"\0" * 1000)  # would corrupt the archive if appended to
    path = _get(server, tmp_path)
    assert server.requests == [(f"/training-datasets/{NAME}.zip", "bytes=1000-", 200)]
    assert (path / "01" / "t002.tif").is_file()


def test_broken_connection_is_resumed_automatically(server: _Server, archive: bytes, tmp_path: Path) -> None:
    server.serve(NAME, archive)
    server.cut_next_after = 5000
    path = _get(server, tmp_path, sha256=hashlib.sha256(archive).hexdigest())
    assert [(r[1], r[2]) for r in server.requests] == [(None, 200), ("bytes=5000-", 206)]
    assert (path / "01_GT" / "TRA" / "man_track.txt").is_file()


def test_checksum_mismatch_deletes_the_download(server: _Server, archive: bytes, tmp_path: Path) -> None:
    server.serve(NAME, archive)
    wrong = "0" * 64
    with pytest.raises(UserInputError) as info:
        _get(server, tmp_path, sha256=wrong)
    message = str(info.value)
    assert wrong in message and hashlib.sha256(archive).hexdigest() in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_malformed_checksum_is_refused_before_downloading(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="sha256"):
        _get(server, tmp_path, sha256="abc")
    assert server.requests == []


def test_corrupt_archive_is_caught_by_crc(server: _Server, archive: bytes, dataset: Path, tmp_path: Path) -> None:
    frame = (dataset / "01" / "t001.tif").read_bytes()
    at = archive.index(frame) + len(frame) // 2
    server.serve(NAME, archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :])
    with pytest.raises(UserInputError, match=r"corrupt archive: member .*t001\.tif fails its CRC-32"):
        _get(server, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_not_a_zip_is_refused(server: _Server, tmp_path: Path) -> None:
    server.serve(NAME, b"<html>maintenance</html>")
    with pytest.raises(UserInputError, match="not a valid zip"):
        _get(server, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_is_refused_with_a_suggestion(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="did you mean 'DIC-C2DH-HeLa'"):
        _get(server, tmp_path, name="DIC-C2DH-Hela")
    with pytest.raises(UserInputError, match="not a CTC dataset"):
        _get(server, tmp_path, name="../etc")
    assert server.requests == []


def test_missing_archive_is_a_one_line_error_naming_the_url(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as info:
        _get(server, tmp_path, name="Fluo-N2DH-NEW")  # follows the naming pattern, so it is tried
    message = str(info.value)
    assert f"{server.base_url}/Fluo-N2DH-NEW.zip" in message and "404" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_connection_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    base = f"http://127.0.0.1:{port}/x"
    with pytest.raises(ConnectionError, match=re.escape(f"{base}/{NAME}.zip")):
        download_dataset(NAME, tmp_path, base_url=base, show_progress=False, timeout=5.0)


def test_existing_target_with_other_content_is_refused(
    server: _Server, archive: bytes, dataset: Path, tmp_path: Path
) -> None:
    server.serve(NAME, archive)
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="exists and is not a complete download"):
        _get(server, tmp_path)
    assert server.requests == []
    # A folder already in the CTC layout counts as complete.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / NAME).symlink_to(dataset)
    assert _get(server, other) == other / NAME and server.requests == []
