"""Downloads against a local HTTP server on 127.0.0.1: resume with Range, checksums, mirrors."""
import hashlib
import http.server
import io

import numpy as np
import pytest

from conftest import LoopbackServer

from krum_mpi.data import DataError, download as dl

PAYLOAD = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Server(LoopbackServer):
    """Serves PAYLOAD at /file (with or without Range support) and records request headers."""

    def __init__(self, ranges=True):
        self.ranges = ranges
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                if self.path != "/file":
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and outer.ranges:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def remote(url, sha=(DIGEST,)):
    return dl.Remote("data.bin", (url,) if isinstance(url, str) else tuple(url), sha)


def test_fresh_download_checks_and_moves_into_place(tmp_path):
    with Server() as srv:
        path = dl.download_file(remote(srv.url + "/file"), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    assert srv.requests == [("/file", None)]


def test_partial_download_resumes_with_a_range_request(tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1_234_567])
    with Server() as srv:
        path = dl.download_file(remote(srv.url + "/file"), tmp_path, progress=False)
    assert srv.requests == [("/file", "bytes=1234567-")]
    assert path.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_the_part(tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"garbage that must not stay" * 1000)
    with Server(ranges=False) as srv:
        path = dl.download_file(remote(srv.url + "/file"), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_is_accepted(tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    with Server() as srv:
        path = dl.download_file(remote(srv.url + "/file"), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and srv.requests[0][1] == f"bytes={len(PAYLOAD)}-"


def test_checksum_mismatch_removes_the_download(tmp_path):
    with Server() as srv, pytest.raises(DataError) as err:
        dl.download_file(remote(srv.url + "/file", sha=("0" * 64,)), tmp_path, progress=False)
    msg = str(err.value)
    assert "checksum mismatch" in msg and DIGEST in msg and "\n" not in msg
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()


def test_existing_good_file_is_not_fetched_again(tmp_path):
    (tmp_path / "data.bin").write_bytes(PAYLOAD)
    with Server() as srv:
        dl.download_file(remote(srv.url + "/file"), tmp_path, progress=False)
    assert srv.requests == []


def test_unpublished_checksum_is_recorded_then_enforced(tmp_path):
    with Server() as srv:
        dl.download_file(remote(srv.url + "/file", sha=()), tmp_path, progress=False)
        assert (tmp_path / "data.bin.sha256").read_text().split()[0] == DIGEST
        (tmp_path / "data.bin").write_bytes(b"tampered")
        path = dl.download_file(remote(srv.url + "/file", sha=()), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and (tmp_path / "data.bin.bad").read_bytes() == b"tampered"


def test_falls_back_to_the_next_mirror(tmp_path):
    with Server() as srv:
        path = dl.download_file(remote([srv.url + "/missing", srv.url + "/file"]), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and [r[0] for r in srv.requests] == ["/missing", "/file"]


def test_unreachable_source_keeps_the_part_and_says_how_to_resume(tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:10])
    with Server() as srv:
        url = srv.url
    with pytest.raises(DataError) as err:                 # the server is gone
        dl.download_file(remote(url + "/file"), tmp_path, progress=False)
    assert "run the command again to resume" in str(err.value)
    assert (tmp_path / "data.bin.part").read_bytes() == PAYLOAD[:10]


def test_download_by_name_uses_the_registry(tmp_path, monkeypatch):
    with Server() as srv:
        monkeypatch.setitem(dl.DATASETS, "toy", dl.RemoteDataset("toy", (remote(srv.url + "/file"),), "toy"))
        folder = dl.download("toy", tmp_path, progress=False)
    assert (folder / "data.bin").read_bytes() == PAYLOAD and folder == tmp_path / "toy"
    with pytest.raises(DataError, match="unknown dataset"):
        dl.download("imagenet", tmp_path)


def test_progress_bar_line():
    out = io.StringIO()
    bar = dl.Progress("x.gz", total=2_000_000, stream=out)
    bar.update(1_000_000)
    bar.close()
    assert "50.0%" in out.getvalue() and "1.0/2.0 MB" in out.getvalue()


def test_registry_names_official_sources_and_checksums():
    assert set(dl.DATASETS) == {"spambase", "mnist", "fashion-mnist", "cifar10", "covtype", "higgs", "susy",
                                "epsilon"}
    for spec in dl.DATASETS.values():
        for r in spec.files:
            assert all(u.startswith(("https://", "http://")) for u in r.urls)
            assert all(len(s) == 64 and int(s, 16) >= 0 for s in r.sha256)
    assert dl.DATASETS["spambase"].files[0].urls[0].startswith("https://archive.ics.uci.edu/")
    assert all(r.sha256 for r in dl.DATASETS["mnist"].files)


def test_spambase_digests_match_the_real_file(spambase_file):
    """The registry accepts the UCI original (CRLF line endings, 702,942 bytes) and an LF copy."""
    lf = spambase_file.read_bytes()
    crlf = lf.replace(b"\n", b"\r\n")
    accepted = dl.DATASETS["spambase"].files[0].sha256
    assert len(crlf) == dl.DATASETS["spambase"].files[0].size
    assert hashlib.sha256(crlf).hexdigest() in accepted and hashlib.sha256(lf).hexdigest() in accepted
