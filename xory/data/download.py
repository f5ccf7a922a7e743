"""Download photos from a list of URLs into label folders, safely and resumably (standard library only).

Each URL is fetched in parallel (a limited pool), with a timeout per read and a deadline per attempt, retried with
exponential backoff on transient faults (timeouts, dropped connections, HTTP 408/429/5xx), and read up to a
maximum size. A file is kept only when its bytes decode as a photo that xory reads (the Content-Type is never
trusted), under a name made from its content hash, written to a temporary name and then linked into place (never
overwriting). DIR/.xory-downloads.jsonl remembers which URL gave which file, so a second run skips them."""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from ..images import ImageError, open_image

__all__ = ["DownloadConfig", "Fetched", "DownloadReport", "read_url_list", "download", "INDEX_NAME"]

INDEX_NAME = ".xory-downloads.jsonl"  # a dot file: dataset.scan ignores it
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "MPO": ".jpg"}
USER_AGENT = "xory-download/0.1 (+https://github.com/xory)"


@dataclass
class DownloadConfig:
    workers: int = 8
    timeout: float = 15.0  # seconds per connect or read
    deadline: float = 60.0  # seconds per attempt in all (a server that trickles bytes is cut off)
    retries: int = 3  # extra attempts after a transient failure
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_bytes: int = 20 * 1024 * 1024
    progress: bool = True


@dataclass
class Fetched:
    url: str
    label: str | None
    status: str  # "saved", "exists" (this URL or these bytes were already there) or "failed"
    path: str | None = None
    reason: str | None = None
    attempts: int = 0


@dataclass
class DownloadReport:
    dest: str
    results: list[Fetched] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(r.status for r in self.results)
        return {k: c.get(k, 0) for k in ("saved", "exists", "failed")}

    @property
    def failed(self) -> list[Fetched]:
        return [r for r in self.results if r.status == "failed"]

    def to_json(self) -> dict:
        return {"dest": self.dest, "counts": self.counts(), "results": [asdict(r) for r in self.results]}

    def summary(self) -> str:
        c = self.counts()
        lines = [f"{c['saved']} photos saved to {self.dest}, {c['exists']} already there, {c['failed']} failed"]
        by_reason: dict[str, list[str]] = {}
        for r in self.failed:
            by_reason.setdefault(r.reason or "?", []).append(r.url)
        for reason, urls in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(urls)} x {reason}")
            lines += [f"      {u}" for u in urls[:10]]
            if len(urls) > 10:
                lines.append(f"      ... and {len(urls) - 10} more")
        return "\n".join(lines)


class _Transient(Exception):
    """Worth another try."""


class _Permanent(Exception):
    """Retrying would give the same answer."""


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (at most 10, urllib's limit) to http(s) only: never to file:// or ftp://."""

    def http_error_302(self, req, fp, code, msg, headers):
        newurl = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Permanent(f"redirected to a non-http URL ({newurl})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_opener = urllib.request.build_opener(_SafeRedirects())


def read_url_list(path: str | Path) -> list[tuple[str | None, str]]:
    """(label, url) per line of a text file: `url` or `label<TAB>url`; blank lines and # comments are skipped.
    A label may be nested (bts/jimin); one that would leave the folder (.., /abs) is refused with its line."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, url = line.rpartition("\t")
        label = label.strip().strip("/") or None
        if label is not None:
            parts = label.split("/")
            if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in label:
                raise ValueError(f"{path}: line {n}: label {label!r} is not a plain folder name")
        out.append((label, url.strip()))
    return out


def _read(url: str, cfg: DownloadConfig) -> tuple[bytes, str]:
    """One attempt: the body (at most max_bytes) and its Content-Type."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise _Permanent("not an http(s) URL")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    start = time.monotonic()
    try:
        with _opener.open(req, timeout=cfg.timeout) as r:
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
                raise _Permanent(f"too large ({int(declared) / 1e6:.1f} MB declared; "
                                 f"limit {cfg.max_bytes / 1e6:.1f} MB)")
            buf = bytearray()
            while chunk := r.read(64 * 1024):
                buf += chunk
                if len(buf) > cfg.max_bytes:
                    raise _Permanent(f"too large (over {cfg.max_bytes / 1e6:.1f} MB)")
                if time.monotonic() - start > cfg.deadline:
                    raise _Transient(f"too slow (not done after {cfg.deadline:g} s)")
            return bytes(buf), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        e.close()
        reason = f"HTTP {e.code} {e.reason}"
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Transient(reason) from None
        raise _Permanent(reason) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, _Permanent):
            raise e.reason from None
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Transient(f"timed out (no answer in {cfg.timeout:g} s)") from None
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise _Permanent(f"bad TLS certificate ({e.reason.verify_message})") from None
        if isinstance(e.reason, socket.gaierror):
            raise _Permanent(f"unknown host ({urlsplit(url).hostname})") from None
        raise _Transient(f"cannot connect ({e.reason})") from None
    except (TimeoutError, socket.timeout):
        raise _Transient(f"timed out (no answer in {cfg.timeout:g} s)") from None
    except http.client.IncompleteRead as e:
        raise _Transient(f"connection closed early ({len(e.partial)} bytes received)") from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise _Transient(f"connection failed ({type(e).__name__}: {e})") from None


def _check(data: bytes, url: str, content_type: str) -> str:
    """The photo's file extension, or _Permanent with the reason its bytes are not a photo xory can read."""
    try:
        open_image(data, url)
    except ImageError as e:
        kind = content_type.split(";")[0].strip()
        hint = f" (server said {kind})" if kind and not kind.startswith("image/") else ""
        raise _Permanent(f"{e.reason}{hint}") from None
    fmt = Image.open(io.BytesIO(data)).format or "?"
    if fmt not in EXTENSIONS:
        raise _Permanent(f"unsupported format {fmt} (xory reads JPEG, PNG, WebP, GIF and BMP)")
    return EXTENSIONS[fmt]


def _save(data: bytes, folder: Path, ext: str) -> tuple[Path, bool]:
    """Write under the content-hash name (temp file, then a no-clobber link). (path, whether it is new)."""
    sha = hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    for existing in folder.glob(f"{sha[:16]}.*"):
        return existing, False
    target = folder / f"{sha[:16]}{ext}"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, target)
        except FileExistsError:  # the same bytes from another URL, saved a moment ago
            return target, False
        except OSError:
            if target.exists():
                return target, False
            os.replace(tmp, target)
        return target, True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(label: str | None, url: str, dest: Path, cfg: DownloadConfig) -> Fetched:
    out = Fetched(url=url, label=label, status="failed")
    for attempt in range(cfg.retries + 1):
        out.attempts = attempt + 1
        try:
            data, content_type = _read(url, cfg)
            ext = _check(data, url, content_type)
            path, new = _save(data, dest / label if label else dest, ext)
            out.status, out.path, out.reason = ("saved" if new else "exists"), str(path), None
            return out
        except _Permanent as e:
            out.reason = str(e)
            return out
        except _Transient as e:
            out.reason = str(e)
            if attempt < cfg.retries:
                time.sleep(cfg.backoff * 2 ** attempt)
    out.reason = f"{out.reason}; gave up after {out.attempts} attempts"
    return out


def _load_index(dest: Path) -> dict[tuple[str | None, str], str]:
    index = {}
    path = dest / INDEX_NAME
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                index[(e.get("label"), e["url"])] = e["path"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run: that URL is fetched again
    return index


def download(urls: list[tuple[str | None, str]], dest: str | Path, cfg: DownloadConfig | None = None) -> DownloadReport:
    """Fetch every (label, url) into dest/label/ (or dest/). URLs already fetched by an earlier run are skipped."""
    cfg = cfg or DownloadConfig()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index, lock = _load_index(dest), threading.Lock()
    report = DownloadReport(dest=str(dest))
    todo = []
    for label, url in dict.fromkeys(urls):  # a URL listed twice under one label is fetched once
        known = index.get((label, url))
        if known and (dest / known).is_file():
            report.results.append(Fetched(url, label, "exists", str(dest / known)))
        else:
            todo.append((label, url))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="download", unit="url", disable=not cfg.progress or not todo)
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool, open(dest / INDEX_NAME, "a", encoding="utf-8") as log:
        futures = [pool.submit(_fetch, label, url, dest, cfg) for label, url in todo]
        for fut in as_completed(futures):
            r = fut.result()
            report.results.append(r)
            if r.path:
                with lock:
                    rel = Path(r.path).relative_to(dest).as_posix()
                    log.write(json.dumps({"label": r.label, "url": r.url, "path": rel}) + "\n")
                    log.flush()
            bar.update(1)
    bar.close()
    order = {key: n for n, key in enumerate(dict.fromkeys(urls))}
    report.results.sort(key=lambda r: order[(r.label, r.url)])
    return report
