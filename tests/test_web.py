"""The web page in a real browser (Debian's chromium driven by playwright) against a live `xory serve`: three real
photos at once, faces named on the page exactly as `xory predict` names them; a page on another origin (localhost
and 127.0.0.2, which Gradio's own CORS rule would refuse); one bad photo among good ones; bounded concurrency; a
phone-sized screen and the keyboard; and a page that behaves like the original one-image page."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from playwright import sync_api  # the `test` extra; the browser is Debian's chromium, never `playwright install`

from conftest import KPOP, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# held out from the default model's training (models/bts-exo/split.json "test"); each shows faces
BTS = KPOP / "bts" / "jimin" / "HannahGuo__2504818706399226120.jpg"
EXO = KPOP / "exo" / "chanyeol" / "divyapusuluru__exo1__chanyeol1.jpg"
GROUP = KPOP / "bts" / "_group" / "irenechang1510__train__BTS_Meal__McDonald_s_BTS_deal_is_here....jpg"
BTS_MEMBERS = {"jhope", "jimin", "jin", "jungkook", "rm", "suga", "v"}
SCREENSHOT_COPY = Path("/tmp/xory-web-screenshot.png")  # for a person to look at after the run
ALL_SETTLED = ("n => { const c = [...document.querySelectorAll('.card')];"
               " return c.length === n && c.every(x => ['done', 'error'].includes(x.dataset.state)); }")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@pytest.fixture(scope="session")
def web_model_dir(request) -> Path:
    """The default bundle when the checkout has it, else the session's small model."""
    from xory.bundle import default_model_dir

    folder = default_model_dir()
    return folder if (folder / "manifest.json").is_file() else request.getfixturevalue("small_model")


@pytest.fixture(scope="session")
def web_model(web_model_dir):
    import xory

    return xory.load(web_model_dir)


@pytest.fixture(scope="session")
def server(web_model_dir, tmp_path_factory) -> str:
    """`xory serve` on a free loopback port, in a subprocess; its URL once it answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xory.cli", "serve", "--model", str(web_model_dir),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(proc, url + "web/", log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer {url} in {timeout} s:\n{log.read_text()[-3000:]}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def static_root(server, web_model_dir, tmp_path_factory) -> Path:
    """Another origin's files: site/ (`xory site` asking the server) and original/ (the original page + a photo)."""
    from xory.export import export_site

    root = tmp_path_factory.mktemp("static")
    export_site(root / "site", api=server, model_dir=web_model_dir)
    (root / "original").mkdir()
    shutil.copy(ROOT / "tests" / "web" / "original.html", root / "original" / "index.html")
    shutil.copy(BTS, root / "original" / "photo.jpg")
    return root


def _static_server(root: Path, host: str) -> str:
    httpd = http.server.ThreadingHTTPServer((host, 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"{host}:{httpd.server_address[1]}"


@pytest.fixture(scope="session")
def other_origins(static_root) -> dict[str, str]:
    """http://localhost:P1 and http://127.0.0.2:P3, both serving static_root (not the xory server's origin)."""
    port = _static_server(static_root, "127.0.0.1").rsplit(":", 1)[1]
    return {"localhost": f"http://localhost:{port}/", "127.0.0.2": f"http://{_static_server(static_root, '127.0.0.2')}/"}


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail("the browser tests drive Debian's chromium: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#status[data-state=ready]", timeout=60_000)


def cards(page) -> list[dict]:
    """Each result card as the person sees it: file name, state, answer, face names, error text."""
    return page.eval_on_selector_all(".card", """cs => cs.map(c => ({
        name: c.querySelector('figcaption').textContent, state: c.dataset.state,
        label: c.querySelector('.answer .label')?.textContent ?? null,
        faces: [...c.querySelectorAll('.face-name')].map(f => f.textContent),
        boxes: c.querySelectorAll('.box').length,
        error: c.querySelector('.error')?.textContent ?? null,
        heat: !c.querySelector('.heat-label').hidden }))""")


def send(page, photos: list[Path], timeout: float = 120_000) -> dict[str, dict]:
    """Choose `photos` in the file picker and wait until every card is done or failed; the new cards by name."""
    before = len(cards(page))
    page.set_input_files("#files", [str(p) for p in photos])
    page.wait_for_function(ALL_SETTLED, arg=before + len(photos), timeout=timeout)
    return {c["name"]: c for c in cards(page)[before:]}


def test_three_photos_at_once(page, server, web_model, tmp_path):
    open_page(page, server + "web/")
    assert page.title() == "BTS or EXO? · xory"
    t0 = time.time()
    shown = send(page, [BTS, EXO, GROUP])
    took = time.time() - t0
    assert [c["state"] for c in shown.values()] == ["done"] * 3, shown
    for photo in (BTS, EXO, GROUP):  # the page names every face exactly as `xory predict` does
        p = web_model.predict(photo)
        assert shown[photo.name]["label"] == p.label
        assert shown[photo.name]["faces"] == [f.label for f in p.faces]
        assert shown[photo.name]["boxes"] == len(p.faces)
    assert shown[BTS.name]["label"] == "bts" and shown[BTS.name]["faces"] == ["jimin"]
    assert shown[EXO.name]["label"] == "exo" and shown[EXO.name]["faces"] == ["chanyeol"]
    group = shown[GROUP.name]
    assert group["label"] == "bts" and len(set(group["faces"]) & BTS_MEMBERS) >= 5, group
    assert page.evaluate("window.xory.state.peak") == 3  # all three were in flight together
    assert "3 photos: 3 done, 0 failed" in page.inner_text("#summary")
    alt = page.get_attribute("#photo-3 img.photo", "alt")
    assert alt.startswith(f"Photo {GROUP.name}: bts; faces: ")
    shot = tmp_path / "three-photos.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, SCREENSHOT_COPY)
    print(f"\nthree photos classified on the page in {took:.1f} s; screenshot: {shot} (copy: {SCREENSHOT_COPY})")

    # The heat-map toggle appears exactly when the server offers /explain, and then shows a picture.
    from gradio_client import Client

    has_explain = "/explain" in Client(server, verbose=False, download_files=False).view_api(
        print_info=False, return_format="dict")["named_endpoints"]
    assert all(c["heat"] == has_explain for c in shown.values())
    if has_explain:
        page.check("#heat-1")
        page.wait_for_function("() => { const h = document.querySelector('#photo-1 img.heat');"
                               " return !h.hidden && h.complete && h.naturalWidth > 0; }", timeout=90_000)
        assert page.is_hidden("#photo-1 img.photo")
        page.screenshot(path=str(tmp_path / "heat-map.png"), full_page=True)
        shutil.copy(tmp_path / "heat-map.png", SCREENSHOT_COPY.with_name("xory-web-heatmap.png"))
        page.uncheck("#heat-1")
        assert page.is_visible("#photo-1 img.photo") and page.is_hidden("#photo-1 img.heat")
    assert page.errors == []


def test_status_while_the_server_is_away(page, server):
    """A server that does not answer (yet): the page says so and keeps trying; photos wait, nothing is lost."""
    away = f"http://127.0.0.1:{free_port()}/"
    page.goto(server + f"web/?api={away}")
    page.wait_for_selector("#status[data-state=waiting]", timeout=30_000)
    assert f"Cannot reach {away} yet" in page.inner_text("#status")
    page.set_input_files("#files", [str(BTS)])
    assert cards(page)[0]["state"] == "waiting"
    page.fill("#api", server)  # point it at the live server: the waiting photo goes
    page.click("#server-form button")
    page.wait_for_function(ALL_SETTLED, arg=1, timeout=60_000)
    assert cards(page)[0]["label"] == "bts"
    assert f"api={server}" in page.url.replace("%3A", ":").replace("%2F", "/")


def test_phone_screen_and_keyboard(page, server):
    page.set_viewport_size({"width": 375, "height": 740})
    open_page(page, server + "web/")
    send(page, [BTS])
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing sticks out sideways
    width = page.eval_on_selector(".card", "c => c.getBoundingClientRect().width")
    assert width > 300  # one card per row, using the screen
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    for control in ("api", "files", "url", "concurrency"):
        assert control in reached, reached
    # every control has a label a screen reader reads
    unlabeled = page.evaluate("[...document.querySelectorAll('input')].filter(i => !i.labels.length).map(i => i.id)")
    assert unlabeled == []


@pytest.mark.parametrize("origin", ["localhost", "127.0.0.2"])
def test_page_on_another_origin(page, server, other_origins, origin):
    """The `xory site` page on another origin asks the server at 127.0.0.1 (its <meta> on localhost; ?api= on
    127.0.0.2, an origin that Gradio's default CORS rule refuses)."""
    url = other_origins[origin] + "site/index.html"
    if origin == "127.0.0.2":
        url += f"?api={server}"
    open_page(page, url)
    assert page.input_value("#api") == server
    shown = send(page, [BTS])
    assert shown[BTS.name]["state"] == "done" and shown[BTS.name]["label"] == "bts"
    assert shown[BTS.name]["faces"] == ["jimin"]
    assert page.errors == []


def test_image_address_drop_and_paste(page, server, other_origins):
    """The other ways in: an image address (fetched by the browser), a dropped file, a pasted file."""
    site = other_origins["localhost"]
    open_page(page, site + "site/index.html")
    page.fill("#url", site + "original/photo.jpg")
    page.press("#url", "Enter")
    page.fill("#url", site + "original/missing.jpg")
    page.click("#url-form button")
    for event in ("drop", "paste"):
        page.evaluate("""async ([event, url]) => {
            const blob = await (await fetch(url)).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], event + ".jpg", {type: "image/jpeg"}));
            const e = event === "drop" ? new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true})
                                       : new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
            document.getElementById("drop").dispatchEvent(e);
        }""", [event, site + "original/photo.jpg"])
    page.wait_for_function(ALL_SETTLED, arg=4, timeout=60_000)
    shown = {c["name"]: c for c in cards(page)}
    assert [shown[n]["label"] for n in ("photo.jpg", "drop.jpg", "paste.jpg")] == ["bts"] * 3
    assert shown["missing.jpg"]["state"] == "error" and "HTTP 404" in shown["missing.jpg"]["error"]


def test_one_bad_photo_among_good_ones(page, server, tmp_path):
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("this is a text file, not a JPEG\n")
    open_page(page, server + "web/?concurrency=2")
    assert page.input_value("#concurrency") == "2"
    shown = send(page, [BTS, bad, EXO, GROUP])
    assert shown[bad.name]["state"] == "error"
    assert "not-a-photo.jpg" in shown[bad.name]["error"] and "not an image" in shown[bad.name]["error"]
    assert [shown[p.name]["label"] for p in (BTS, EXO, GROUP)] == ["bts", "exo", "bts"]
    assert page.evaluate("window.xory.state.peak") == 2  # never more than the bound in flight
    assert "4 photos: 3 done, 1 failed" in page.inner_text("#summary")
    # the server keeps answering after the bad photo
    assert send(page, [BTS])[BTS.name]["state"] == "done"


def test_original_one_image_page(page, server, other_origins):
    """connect, predict("/predict", {img: blob}) with a raw Blob, read data[0].confidences[0..1]: unchanged."""
    page.goto(other_origins["localhost"] + f"original/index.html?api={server}&photo=photo.jpg")
    page.wait_for_function("() => document.getElementById('label1').textContent"
                           " || document.getElementById('error').textContent", timeout=60_000)
    assert page.inner_text("#error") == ""
    assert page.inner_text("#label1") == "bts"
    assert float(page.inner_text("#conf1")) > 0.5
    assert page.inner_text("#label2") in {"exo", "neither"}
    assert float(page.inner_text("#conf1")) >= float(page.inner_text("#conf2"))


def test_served_page_files_and_links(server):
    status, body = get(server + "web/")
    assert status == 200 and b'<script type="module" src="app.js">' in body
    for name in ("app.js", "gradio-client.js", "style.css"):
        assert get(server + "web/" + name)[0] == 200
    status, about = get(server + "web/about.html")
    assert status == 200 and b"Back to the classifier" in about and b"bts" in about
    config = json.loads(get(server + "config")[1])
    markdown = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "[the web page](web/)" in markdown  # the Gradio app at / links to the page
    req = urllib.request.Request(server + "web/gradio-client.js", headers={"Origin": "http://127.0.0.2:1"})
    with urllib.request.urlopen(req, timeout=5) as r:  # a page on any origin may import the client module
        assert r.headers["access-control-allow-origin"] == "*"


# ---------------------------------------------------------------- xory site, xory space


def test_site_folder(tmp_path, web_model_dir, capsys):
    from xory.cli import main

    out = tmp_path / "site"
    assert main(["site", str(out), "--api", "https://someone-bts-or-exo.hf.space", "--model", str(web_model_dir)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".nojekyll", ".xory-export", "about.html", "app.js",
                                                     "gradio-client.js", "index.html", "style.css"]
    assert '<meta name="xory-api" content="https://someone-bts-or-exo.hf.space/">' in (out / "index.html").read_text()
    about = (out / "about.html").read_text()
    assert "About this model: BTS or EXO?" in about and "jimin" in about and "chanyeol" in about
    assert "publish it with GitHub Pages" in capsys.readouterr().out

    # the model card, when there is one, is the About page
    # a second export replaces xory's own files and keeps the user's (a git repository, a CNAME for Pages)
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "CNAME").write_text("bts-or-exo.example.org\n")
    card = tmp_path / "card.html"
    card.write_text("<html><body class=x><h1>Model card: BTS or EXO?</h1></body></html>")
    assert main(["site", str(out), "--api", "http://127.0.0.1:7860/?a=1&b=<2>", "--model", str(web_model_dir),
                 "--card", str(card)]) == 0
    about = (out / "about.html").read_text()
    assert about.startswith("<html><body class=x><p><a href=\"./\">") and "Model card: BTS or EXO?" in about
    assert '<meta name="xory-api" content="http://127.0.0.1:7860/?a=1&amp;b=&lt;2&gt;/">' in \
        (out / "index.html").read_text()
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (out / "CNAME").read_text() == "bts-or-exo.example.org\n"

    # a fresh clone of a Pages repository (only .git) is a fine place for a first export
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    assert main(["site", str(clone), "--api", "https://x.hf.space/", "--model", str(web_model_dir)]) == 0
    assert (clone / ".git").is_dir() and (clone / "index.html").is_file()

    # a folder that is not an earlier export is never touched; bad --api and a missing card are refused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["site", str(mine), "--api", "https://x.hf.space/", "--model", str(web_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "not empty and was not made by `xory site`" in err and "nothing was changed" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my notes"
    assert main(["site", str(tmp_path / "s2"), "--api", "bts-or-exo.hf.space", "--model", str(web_model_dir)]) == 2
    assert "give the server's full address" in capsys.readouterr().err
    assert main(["site", str(tmp_path / "s3"), "--api", "http://10.0.0.5:7860/", "--model", str(web_model_dir),
                 "--card", str(tmp_path / "nope.html")]) == 2
    assert "nope.html: model card not found" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_space_folder_starts_and_answers(tmp_path, web_model_dir, run_space):
    """`xory space`: pinned requirements, the Space README, xory and the model; `python app.py` answers /predict
    (run here with this interpreter; in a fresh venv from requirements.txt alone: below)."""
    import importlib.metadata as md

    from xory.export import export_space

    space = export_space(tmp_path / "space", model_dir=web_model_dir).folder
    reqs = (space / "requirements.txt").read_text().split()
    assert f"gradio=={md.version('gradio')}" in reqs and f"onnxruntime=={md.version('onnxruntime')}" in reqs
    assert all("==" in r for r in reqs) and not any(r.startswith(("torch", "pytest", "xory")) for r in reqs)
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\ntitle: BTS or EXO?\n") and f"sdk_version: {md.version('gradio')}\n" in readme
    assert "app_file: app.py" in readme and "sdk: gradio" in readme
    assert sorted(p.name for p in (space / "model").iterdir()) == sorted(
        ["manifest.json", *json.loads((web_model_dir / "manifest.json").read_text())["files"]]
        + (["report.html"] if (web_model_dir / "report.html").is_file() else []))
    for f in ("app.py", "model/manifest.json", "model/heads.npz", "xory/app.py", "xory/assets/efficientnet_lite0.onnx",
              "xory/web/index.html", "xory/web/app.js"):
        assert (space / f).is_file(), f
    assert not list(space.rglob("__pycache__"))

    found = subprocess.run([sys.executable, "-c", "import xory; print(xory.__file__)"], cwd=space,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == str(space / "xory" / "__init__.py")  # the Space runs its own copy of xory
    photo_ok(run_space(space, sys.executable))


@pytest.fixture
def run_space(tmp_path):
    """start(space_folder, python) -> URL: `python app.py` in the folder, as a Space runs it; stopped after."""
    procs: list[subprocess.Popen] = []

    def start(space: Path, python: str) -> str:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("XORY_MODEL", "PYTHONPATH")}
        env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False")
        log = tmp_path / "space.log"
        with open(log, "wb") as out:
            procs.append(subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(procs[-1], url + "web/", log)
        assert f"serving {space / 'model'}" in log.read_text()
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def photo_ok(url: str) -> None:
    from gradio_client import Client, handle_file

    answer = Client(url, verbose=False).predict(img=handle_file(str(BTS)), api_name="/predict")
    assert answer["label"] == "bts" and answer["confidences"][0]["label"] == "bts"


@pytest.mark.skipif(bool(os.environ.get("XORY_QUICK")), reason="XORY_QUICK: skips the fresh venv (about 3 minutes of pip)")
def test_space_in_a_fresh_venv(tmp_path, web_model_dir, run_space):
    """The Space folder alone: a fresh venv, `pip install -r requirements.txt`, `python app.py`, /predict."""
    from xory.export import export_space

    space = export_space(tmp_path / "space", model_dir=web_model_dir).folder
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    t0 = time.time()
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"], cwd=space, check=True)
    print(f"\nfresh venv: pip install -r requirements.txt took {time.time() - t0:.0f} s")
    photo_ok(run_space(space, str(venv / "bin" / "python")))
