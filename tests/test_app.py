"""The served app: /predict (gr.Label shape) and /predict_faces through gradio_client against a live server on
loopback; bad inputs get a clear error and the server keeps answering."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from conftest import KPOP, ROOT, photos

from test_images import bomb_png


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`xory serve` with the default model, as a user starts it."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xory.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
        time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("xory serve did not answer in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=False)


def test_api_names_and_parameter(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/predict_faces"} <= set(api)
    assert [p["parameter_name"] for p in api["/predict"]["parameters"]] == ["img"]


def test_predict_returns_the_label_shape(client):
    from gradio_client import handle_file

    group = photos(KPOP / "bts" / "_group")[40]
    out = client.predict(img=handle_file(str(group)), api_name="/predict")
    assert list(out) == ["label", "confidences"] and out["label"] == "bts"
    assert [c["label"] for c in out["confidences"]][0] == "bts"
    assert {c["label"] for c in out["confidences"]} == {"bts", "exo", "neither"}
    assert all(list(c) == ["label", "confidence"] for c in out["confidences"])


def test_predict_faces_names_members(client):
    from gradio_client import handle_file

    group = photos(KPOP / "bts" / "_group")[40]
    out = client.predict(img=handle_file(str(group)), api_name="/predict_faces")
    assert out["label"] == "bts" and out["error"] is None and len(out["faces"]) >= 3
    w, h = Image.open(group).size
    for face in out["faces"]:
        left, top, right, bottom = face["box"]
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert face["group"] in ("bts", "exo", "neither")


def bad_inputs(tmp):
    src = photos(KPOP / "exo" / "chanyeol")[3]
    cases = {
        "empty.jpg": b"",
        "text.jpg": b"hello, not a photo",
        "truncated.jpg": src.read_bytes()[: src.stat().st_size // 2],
        "bomb.png": bomb_png(),
    }
    Image.new("RGB", (1, 1)).save(tmp / "tiny.png")
    for name, data in cases.items():
        (tmp / name).write_bytes(data)
    return {
        "empty.jpg": "empty file (0 bytes)",
        "text.jpg": "not an image (unrecognised format)",
        "truncated.jpg": "truncated or damaged image",
        "bomb.png": "image too large",
        "tiny.png": "image too small",
    }


def test_bad_inputs_get_clear_errors_and_the_server_keeps_answering(client, tmp_path):
    from gradio_client import handle_file

    for name, reason in bad_inputs(tmp_path).items():
        with pytest.raises(Exception) as err:
            client.predict(img=handle_file(str(tmp_path / name)), api_name="/predict")
        assert name in str(err.value) and reason in str(err.value), str(err.value)
    jimin = photos(KPOP / "bts" / "jimin")[20]
    assert client.predict(img=handle_file(str(jimin)), api_name="/predict")["label"] in ("bts", "exo", "neither")


def test_cors_allows_other_origins(server):
    r = httpx.get(server + "gradio_api/info", headers={"Origin": "http://127.0.0.2:9999"})
    assert r.headers.get("access-control-allow-origin") in ("*", "http://127.0.0.2:9999")


@pytest.mark.parametrize("endpoint", ["predict", "predict_faces", "explain"])
def test_a_path_on_the_server_is_never_opened(server, client, endpoint):
    """A request may name a file instead of uploading one; the server must not read its own files for it."""
    secret = KPOP / "bts" / "jimin" / photos(KPOP / "bts" / "jimin")[0].name
    r = httpx.post(f"{server}gradio_api/call/{endpoint}", timeout=30,
                   json={"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}]})
    event = r.json()["event_id"]
    stream = httpx.get(f"{server}gradio_api/call/{endpoint}/{event}", timeout=60).text
    assert "event: error" in stream and '"label"' not in stream, stream
    from gradio_client import handle_file  # and an upload still works

    assert client.predict(img=handle_file(str(secret)), api_name="/predict")["label"] == "bts"
