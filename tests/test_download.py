"""cirtutor.download against a loopback HTTP server: resume, verification, recipes, CLI."""
import hashlib
import io
import json
import re
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cirtutor import download as dl
from cirtutor.download import ChecksumError, DownloadError, cli_main, download_file

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 1000  # 256 kB, several read chunks' worth of distinct bytes


class FakeServer:
    """Serves `files` (path -> bytes) with Range support on 127.0.0.1.

    `drops[path] = n` sends only n body bytes on the next request for path, then closes the
    connection; `ignore_range` holds paths answered with 200 and the whole file regardless of Range.
    `requests` records (path, Range header) for every request.
    """

    def __init__(self):
        self.files, self.drops, self.ignore_range, self.requests = {}, {}, set(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.answer(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def answer(self, h):
        range_header = h.headers.get("Range")
        self.requests.append((h.path, range_header))
        data = self.files.get(h.path)
        if data is None:
            return h.send_error(404)
        start = 0
        if range_header and h.path not in self.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                return h.end_headers()
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut = self.drops.pop(h.path, None)
        h.wfile.write(body if cut is None else body[:cut])
        h.close_connection = True

    def add(self, path, data):
        self.files[path] = data
        return self.url + path


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_WAIT", 0.0)


def sha(data, name="sha256"):
    return hashlib.new(name, data).hexdigest()


# -----------------------------------------------------------------------------
# download_file


def test_plain_download_verifies_and_lands_atomically(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    dest = tmp_path / "sub" / "f.bin"
    out = download_file(url, dest, sha256=sha(PAYLOAD), md5=sha(PAYLOAD, "md5"),
                        size=len(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]  # no .part left over


def test_wrong_checksum_raises_and_leaves_no_final_file(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    with pytest.raises(ChecksumError) as err:
        download_file(url, dest, sha1="0" * 40, progress=False)
    msg = str(err.value)
    assert "f.bin" in msg and "0" * 40 in msg and sha(PAYLOAD, "sha1") in msg and "re-run" in msg
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    assert (tmp_path / "f.bin.corrupt").read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.drops["/f.bin"] = 100_000
    dest = download_file(url, tmp_path / "f.bin", sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]


def test_no_retries_keeps_part_and_next_call_resumes(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.drops["/f.bin"] = 70_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=0, progress=False)
    assert "70,000 bytes" in str(err.value) and ".part" in str(err.value)
    assert "resume" in str(err.value)
    assert not dest.exists() and (tmp_path / "f.bin.part").stat().st_size == 70_000
    download_file(url, dest, sha256=sha(PAYLOAD), retries=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", "bytes=70000-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from some other file")
    dest = download_file(url, tmp_path / "f.bin", sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_finalized(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = download_file(url, tmp_path / "f.bin", sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing\.bin: HTTP 404"):
        download_file(server.url + "/missing.bin", tmp_path / "m.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_already_present_is_skipped(server, tmp_path, capsys):
    url = server.add("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    download_file(url, dest, sha256=sha(PAYLOAD), progress=False)
    assert server.requests == [] and "already present" in capsys.readouterr().out


def test_present_but_corrupt_is_downloaded_again(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"truncated")
    download_file(url, dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "f.bin.corrupt").read_bytes() == b"truncated"


# -----------------------------------------------------------------------------
# recipes


def test_fashioniq_recipe(server, tmp_path):
    cats = ("dress", "shirt")
    for cat in cats:
        for split in dl.FASHIONIQ_SPLITS:
            server.add(f"/fiq/captions/cap.{cat}.{split}.json",
                       json.dumps([{"candidate": "A1", "target": "B1", "captions": ["x", "y"]}]).encode())
            server.add(f"/fiq/image_splits/split.{cat}.{split}.json", json.dumps(["A1", "B1"]).encode())
    server.add("/img/A1.jpg", b"jpeg A1")
    server.add("/img/B1.jpg", b"jpeg B1")
    server.add("/fiq/image_url/asin2url.dress.txt",
               f"A1\t{server.url}/img/A1.jpg\nA2  {server.url}/img/dead.jpg\n\n".encode())
    server.add("/fiq/image_url/asin2url.shirt.txt", f"B1 {server.url}/img/B1.jpg\n".encode())

    report = dl.download_fashioniq(tmp_path, categories=cats, base_url=server.url + "/fiq/",
                                   workers=4, progress=False)
    assert (tmp_path / "captions" / "cap.shirt.val.json").exists()
    assert (tmp_path / "image_splits" / "split.dress.test.json").exists()
    assert (tmp_path / "images" / "A1.jpg").read_bytes() == b"jpeg A1"
    assert (tmp_path / "images" / "B1.jpg").read_bytes() == b"jpeg B1"
    assert not (tmp_path / "images" / "A2.jpg").exists()
    assert report["total"] == 3 and report["downloaded"] == 2
    assert [f["url"] for f in report["failed"]] == [server.url + "/img/dead.jpg"]
    assert json.loads((tmp_path / "images_report.json").read_text()) == report

    n = len(server.requests)
    report = dl.download_fashioniq(tmp_path, categories=cats, base_url=server.url + "/fiq",
                                   workers=4, progress=False)
    assert report["present"] == 2 and report["downloaded"] == 0
    assert [p for p, _ in server.requests[n:]] == ["/img/dead.jpg"]  # only the broken link again


def test_cirr_recipe(server, tmp_path, capsys):
    for split, name in (("train", "./train/3/train-1-0-img0.png"), ("val", "./dev/dev-1-0-img0.png"),
                        ("test1", "./test1/test1-1-0-img0.png")):
        server.add(f"/cirr/captions/cap.rc2.{split}.json", json.dumps([{"pairid": 0}]).encode())
        server.add(f"/cirr/image_splits/split.rc2.{split}.json",
                   json.dumps({Path(name).stem: name}).encode())
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "dev-1-0-img0.png").write_bytes(b"png")
    code = cli_main(["cirr", "--root", str(tmp_path), "--base-url", server.url + "/cirr",
                     "--no-progress"])
    assert code == 0
    assert json.loads((tmp_path / "cirr" / "captions" / "cap.rc2.val.json").read_text()) == [{"pairid": 0}]
    assert (tmp_path / "cirr" / "image_splits" / "split.rc2.test1.json").exists()
    out = capsys.readouterr().out
    assert "2 of 3 images are missing" in out and "NLVR2" in out
    assert f"{tmp_path}/train/<n>/train-*.png" in out


def test_blip_recipe_prints_sha256(server, tmp_path, capsys):
    url = server.add("/model_base.pth", PAYLOAD)
    assert cli_main(["blip", "--url", url, "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "model_base.pth").read_bytes() == PAYLOAD
    assert sha(PAYLOAD) in capsys.readouterr().out
    assert cli_main(["blip", "--url", url, "--out", str(tmp_path), "--sha256", "0" * 64]) == 1


def make_zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_checkpoint_archive_verified_and_extracted(server, tmp_path, capsys):
    archive = make_zip({"ckpt/fashioniq/stage1.pt": b"weights 1", "ckpt/cirr/stage2.pt": b"weights 2"})
    url = server.add("/candidate_rerank_ckpts.zip", archive)
    out = tmp_path / "models"
    assert cli_main(["checkpoints", "--url", url, "--out", str(out), "--sha1", sha(archive, "sha1"),
                     "--no-progress"]) == 0
    assert (out / "ckpt" / "fashioniq" / "stage1.pt").read_bytes() == b"weights 1"
    assert (out / "ckpt" / "cirr" / "stage2.pt").read_bytes() == b"weights 2"
    assert (out / dl.CHECKPOINTS_NAME).read_bytes() == archive

    capsys.readouterr()
    assert cli_main(["checkpoints", "--url", url, "--out", str(tmp_path / "other"),
                     "--no-progress"]) == 1  # the real archive's sha1 does not match
    err = capsys.readouterr().err
    assert err.startswith("error: ") and dl.CHECKPOINTS_SHA1 in err and "Traceback" not in err
    assert not (tmp_path / "other" / dl.CHECKPOINTS_NAME).exists()


def test_checkpoint_archive_zip_slip_is_refused(server, tmp_path):
    archive = make_zip({"ok.pt": b"fine", "../evil.txt": b"escaped"})
    url = server.add("/evil.zip", archive)
    out = tmp_path / "models"
    with pytest.raises(DownloadError, match="zip-slip"):
        dl.download_checkpoints(url, out, sha1=sha(archive, "sha1"), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (out / "ok.pt").exists()


@pytest.mark.parametrize("script", ["download_fashioniq.py", "download_cirr.py",
                                    "download_blip.py", "download_checkpoints.py"])
def test_data_scripts_help(script):
    proc = subprocess.run([sys.executable, str(REPO / "data_scripts" / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--no-progress" in proc.stdout
