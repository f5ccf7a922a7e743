"""xory data download against a local HTTP server on loopback (no network): real photos, a PNG behind a wrong
Content-Type, 404s, slow answers, a flaky server, HTML pages, oversized bodies, redirects and a truncated JPEG."""
from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from conftest import KPOP
from xory.cli import main
from xory.data.download import INDEX_NAME, DownloadConfig, download, read_url_list

PHOTOS = {
    "a": sorted((KPOP / "bts" / "jimin").glob("*.jpg"))[0].read_bytes(),
    "b": sorted((KPOP / "exo" / "kai").glob("*.jpg"))[0].read_bytes(),
    "c": sorted((KPOP / "bts" / "suga").glob("*.jpg"))[0].read_bytes(),
    "d": sorted((KPOP / "exo" / "chen").glob("*.jpg"))[0].read_bytes(),
    "png": (KPOP / "exo" / "baekhyun" / "maxiaoyanD__img__bbh1.png").read_bytes(),
}
LIMIT = 2_000_000  # max_bytes in these tests; every real photo above is smaller
assert all(len(b) < LIMIT for b in PHOTOS.values())


class Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def send(self, code: int, body: bytes, ctype: str, length: bool = True, headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        Handler.hits[path] = Handler.hits.get(path, 0) + 1
        if path == "/a.jpg":
            self.send(200, PHOTOS["a"], "image/jpeg")
        elif path == "/b":
            self.send(200, PHOTOS["b"], "image/jpeg")
        elif path == "/png-as-text":  # the Content-Type lies: the bytes decide
            self.send(200, PHOTOS["png"], "text/plain")
        elif path == "/copy-of-a":
            self.send(200, PHOTOS["a"], "image/jpeg")
        elif path == "/redirect":
            self.send(302, b"", "text/plain", headers={"Location": "/hidden/c.jpg"})
        elif path == "/hidden/c.jpg":
            self.send(200, PHOTOS["c"], "image/jpeg")
        elif path == "/to-file":
            self.send(302, b"", "text/plain", headers={"Location": "file:///etc/passwd"})
        elif path == "/page.html":
            self.send(200, b"<!doctype html><html><body><img src='a.jpg'></body></html>", "text/html; charset=utf-8")
        elif path == "/truncated.jpg":
            self.send(200, PHOTOS["b"][: len(PHOTOS["b"]) // 2], "image/jpeg")
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(LIMIT * 5))
            self.end_headers()
        elif path == "/big-streamed":  # no Content-Length: the reader must stop by itself
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(LIMIT // 65536 + 4):
                    self.wfile.write(PHOTOS["a"][:2] + b"\0" * 65534)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/slow":
            time.sleep(2.0)
            self.send(200, PHOTOS["a"], "image/jpeg")
        elif path == "/flaky":  # 503 the first time, the photo after
            if Handler.hits[path] == 1:
                self.send(503, b"busy", "text/plain")
            else:
                self.send(200, PHOTOS["d"], "image/jpeg")
        else:
            self.send(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def cfg(**kw) -> DownloadConfig:
    base = dict(workers=4, timeout=0.5, deadline=5.0, retries=1, backoff=0.05, max_bytes=LIMIT, progress=False)
    return DownloadConfig(**{**base, **kw})


def name_of(data: bytes, ext: str) -> str:
    return hashlib.sha256(data).hexdigest()[:16] + ext


def test_download_keeps_only_real_photos_and_says_why_the_rest_failed(server, tmp_path):
    Handler.hits.clear()
    urls = [("bts", f"{server}/a.jpg"), ("exo", f"{server}/b"), ("exo", f"{server}/png-as-text"),
            ("bts", f"{server}/copy-of-a"), ("bts", f"{server}/redirect"), ("bts", f"{server}/to-file"),
            ("bts", f"{server}/page.html"), ("bts", f"{server}/truncated.jpg"), ("bts", f"{server}/missing.jpg"),
            ("bts", f"{server}/big-declared"), ("bts", f"{server}/big-streamed"), ("bts", f"{server}/slow"),
            ("exo", f"{server}/flaky"), ("bts", "ftp://example.org/x.jpg"), ("bts", f"{server}/a.jpg")]
    report = download(urls, tmp_path, cfg())
    by_url = {r.url.replace(server, ""): r for r in report.results}
    assert len(report.results) == 14  # the repeated (label, url) is fetched once
    assert [r.url for r in report.results][:3] == [u for _, u in urls[:3]]  # in list order

    saved = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and p.name != INDEX_NAME}
    assert saved == {f"bts/{name_of(PHOTOS['a'], '.jpg')}", f"exo/{name_of(PHOTOS['b'], '.jpg')}",
                     f"exo/{name_of(PHOTOS['png'], '.png')}", f"bts/{name_of(PHOTOS['c'], '.jpg')}",
                     f"exo/{name_of(PHOTOS['d'], '.jpg')}"}
    assert (tmp_path / "bts" / name_of(PHOTOS["c"], ".jpg")).read_bytes() == PHOTOS["c"]
    assert (tmp_path / "exo" / name_of(PHOTOS["png"], ".png")).read_bytes() == PHOTOS["png"]

    assert by_url["/png-as-text"].status == "saved"
    assert by_url["/redirect"].status == "saved"
    # the same bytes from two URLs: one file; whichever finished first was saved, the other found it there
    assert sorted([by_url["/a.jpg"].status, by_url["/copy-of-a"].status]) == ["exists", "saved"]
    assert by_url["/a.jpg"].path == by_url["/copy-of-a"].path
    assert by_url["/flaky"].status == "saved" and by_url["/flaky"].attempts == 2
    assert by_url["/b"].status == "saved"  # no extension in the URL: the bytes name the format

    failed = {u: r.reason for u, r in by_url.items() if r.status == "failed"}
    assert set(failed) == {"/to-file", "/page.html", "/truncated.jpg", "/missing.jpg", "/big-declared",
                           "/big-streamed", "/slow", "ftp://example.org/x.jpg"}
    assert failed["/page.html"] == "not an image (unrecognised format) (server said text/html)"
    assert failed["/truncated.jpg"] == "truncated or damaged image"
    assert failed["/missing.jpg"] == "HTTP 404 Not Found"
    assert failed["/big-declared"].startswith("too large (10.0 MB declared; limit 2.0 MB)")
    assert failed["/big-streamed"] == "too large (over 2.0 MB)"
    assert failed["/slow"] == "timed out (no answer in 0.5 s); gave up after 2 attempts"
    assert failed["/to-file"] == "redirected to a non-http URL (file:///etc/passwd)"
    assert failed["ftp://example.org/x.jpg"] == "not an http(s) URL"
    assert by_url["/missing.jpg"].attempts == 1  # a 404 is not retried
    assert report.counts() == {"saved": 5, "exists": 1, "failed": 8}
    text = report.summary()
    assert text.startswith(f"5 photos saved to {tmp_path}, 1 already there, 8 failed")
    assert "1 x HTTP 404 Not Found" in text and f"{server}/missing.jpg" in text
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file left behind

    # a second run resumes: nothing saved is fetched again, the failures are retried
    before = dict(Handler.hits)
    again = download(urls, tmp_path, cfg(retries=0))
    assert again.counts() == {"saved": 0, "exists": 6, "failed": 8}
    for u in ["/a.jpg", "/b", "/png-as-text", "/redirect", "/flaky", "/copy-of-a"]:
        assert Handler.hits.get(u, 0) == before.get(u, 0), u
    assert Handler.hits["/missing.jpg"] == before["/missing.jpg"] + 1


def test_url_list_and_cli(server, tmp_path, capsys):
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# BTS\nbts/jimin\t{server}/a.jpg\n\n{server}/b\nbts\t{server}/missing.jpg\n")
    assert read_url_list(urls) == [("bts/jimin", f"{server}/a.jpg"), (None, f"{server}/b"),
                                   ("bts", f"{server}/missing.jpg")]
    out = tmp_path / "photos"
    assert main(["data", "download", str(urls), str(out), "--timeout", "2", "--retries", "0"]) == 1
    printed = capsys.readouterr().out
    assert "2 photos saved" in printed and "1 failed" in printed and "HTTP 404 Not Found" in printed
    assert (out / "bts" / "jimin" / name_of(PHOTOS["a"], ".jpg")).is_file()
    assert (out / name_of(PHOTOS["b"], ".jpg")).is_file()

    bad = tmp_path / "bad.txt"
    bad.write_text(f"../../etc\t{server}/a.jpg\n")
    assert main(["data", "download", str(bad), str(out)]) == 2
    assert "line 1: label '../../etc' is not a plain folder name" in capsys.readouterr().err
