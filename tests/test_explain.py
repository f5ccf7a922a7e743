"""Explanations on real photos: a one-face photo, a group photo and a bear photo; the CAM is exact, has the
photo's shape, is normalised and follows the object; the notebook API shows pictures; the app's /explain API."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import xory
from conftest import BEARS, ROOT, photos
from xory.cli import main
from xory.features.extract import extract_many
from xory.images import Photo, open_image

PNG = b"\x89PNG\r\n\x1a\n"


def first_with_faces(folder, want) -> str:
    """The first photo of a folder whose face count satisfies want(n) (features from the shared cache)."""
    feats = extract_many([str(p) for p in photos(folder)], progress=False)
    return next(p for p, f in feats.items() if not isinstance(f, str) and want(f.n_faces))


@pytest.fixture(scope="module")
def small(small_model):
    return xory.load(small_model)


@pytest.fixture(scope="module")
def bears(bears_model):
    return xory.load(bears_model)


def test_one_face_photo(small, small_kpop):
    path = first_with_faces(small_kpop / "bts" / "jimin", lambda n: n == 1)
    ex = small.explain(path)
    p = ex.prediction
    assert p.method == "faces" and len(ex.faces) == 1 and ex.cam is None
    f = ex.faces[0]
    assert f.weight == 1.0 and f.contributions == pytest.approx(p.confidences)  # one face: the whole answer
    assert f.importance.shape == (7, 7)
    assert f.base_probability == pytest.approx(f.face.confidence, abs=1e-5)  # the chip is what was embedded
    assert f.importance.max() > 0.01  # greying some part of the face lowers the member's probability
    assert f.chip.size == (150, 150)
    assert ex._repr_png_().startswith(PNG)
    assert ex.to_json()["faces"][0]["occlusion"]["grid"] == [7, 7]


def test_group_photo_contributions_add_up(small, small_kpop):
    path = first_with_faces(small_kpop / "bts" / "_group", lambda n: 3 <= n <= 6)
    ex = small.explain(path, grid=4, max_faces=2)
    p = ex.prediction
    assert len(ex.faces) == len(p.faces) >= 3
    assert sum(f.weight for f in ex.faces) == pytest.approx(1.0)
    for cls, conf in p.confidences.items():
        assert sum(f.contributions[cls] for f in ex.faces) == pytest.approx(conf, abs=1e-9)
    widths = [f.face.width for f in ex.faces]
    assert [f.weight for f in ex.faces] == pytest.approx([w / sum(widths) for w in widths])
    mapped = [f for f in ex.faces if f.importance is not None]
    assert len(mapped) == 2 and all(f.importance.shape == (4, 4) for f in mapped)
    assert min(f.weight for f in mapped) >= max(f.weight for f in ex.faces if f.importance is None)
    text = str(ex)
    assert f"{len(p.faces)} face(s)" in text and p.faces[0].label in text
    img = Image.open(io.BytesIO(ex._repr_png_()))
    assert img.width > 600 and img.height > 200


def test_bear_photo_cam(bears):
    path = photos(BEARS / "grizzly")[20]  # the bears model trained on photos 0..9
    ex = bears.explain(path)
    photo = open_image(path).image
    assert ex.prediction.method == "image" and ex.faces == []
    assert ex.cam.shape == (photo.height, photo.width)
    assert ex.cam.min() == 0.0 and ex.cam.max() == pytest.approx(1.0)
    assert ex.cam_class == ex.prediction.label
    j = ex.to_json(heatmap=True)
    assert j["heatmap"].startswith("data:image/png;base64,") and j["cam_class"] == ex.cam_class
    assert ex._repr_png_().startswith(PNG) and ex.image.width > ex.image.height * photo.width / photo.height


def test_cam_is_each_cell_share_of_the_logit(bears):
    img = open_image(photos(BEARS / "black")[20]).image
    head = bears.image_head
    vec, fmap = bears.extractor.image.feature_map(img)
    cams = np.tensordot(head.W / head.scale, fmap.astype(np.float64), axes=1)  # (classes, 7, 7)
    const = head.b - (head.mean / head.scale) @ head.W.T
    assert cams.mean(axis=(1, 2)) + const == pytest.approx(head.logits(vec)[0], abs=1e-3)


def test_cam_peak_moves_with_the_object(bears):
    bear = open_image(photos(BEARS / "grizzly")[21]).image
    peaks = []
    for left in (20, 340):
        canvas = Image.new("RGB", (640, 320), (128, 128, 128))
        canvas.paste(bear.resize((280, 280)), (left, 20))
        ex = bears.explain(Photo("canvas.png", canvas, "canvas"))
        y, x = np.unravel_index(ex.cam.argmax(), ex.cam.shape)
        peaks.append(x)
        assert ex.cam[:, left:left + 280].mean() > 1.5 * np.delete(ex.cam, np.s_[left:left + 280], axis=1).mean()
        cell = canvas.width / 7  # the map is 7x7: its peak is known to within a cell
        assert left - cell <= x <= left + 280 + cell
    assert peaks[1] - peaks[0] > 640 / 7, peaks  # the peak followed the bear by more than a cell


def test_explain_cli_writes_the_picture(small_model, small_kpop, tmp_path, capsys):
    path = first_with_faces(small_kpop / "exo" / "chanyeol", lambda n: n == 1)
    out = tmp_path / "why" / "heat.png"
    assert main(["explain", path, "--model", str(small_model), "--out", str(out), "--grid", "3"]) == 0
    text = capsys.readouterr().out
    assert "1 face(s)" in text and f"wrote {out}" in text
    assert out.read_bytes().startswith(PNG)
    assert main(["explain", str(tmp_path / "none.jpg"), "--model", str(small_model)]) == 2
    assert "none.jpg: file not found" in capsys.readouterr().err


def test_prediction_shows_in_a_notebook(small, small_kpop):
    path = first_with_faces(small_kpop / "bts" / "_group", lambda n: n >= 2)
    p = small.predict(path)
    png = p._repr_png_()
    assert png.startswith(PNG)
    assert Image.open(io.BytesIO(png)).size == p.image().size
    html = p._repr_html_()
    assert f"<b>{p.label}</b>" in html and "data:image/jpeg;base64," in html and p.faces[0].label in html
    bad = small.predict(b"not a photo")
    assert bad._repr_png_() is None and "error" in bad._repr_html_()


def test_app_explain_endpoint(small_model, small_kpop):
    """`xory serve` with a small model: /explain answers JSON with each face's contribution and the picture."""
    import httpx
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xory.cli", "serve", "--model", str(small_model), "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        client = Client(url, verbose=False, download_files=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert [p["parameter_name"] for p in api["/explain"]["parameters"]] == ["img"]
        path = first_with_faces(small_kpop / "bts" / "jimin", lambda n: n == 1)
        out = client.predict(img=handle_file(path), api_name="/explain")
        assert out["error"] is None and out["method"] == "faces" and len(out["faces"]) == 1
        face = out["faces"][0]
        assert face["weight"] == 1.0 and face["occlusion"]["grid"] == [5, 5]
        assert face["contributions"] == pytest.approx(out["confidences"], abs=1e-3)
        assert out["heatmap"].startswith("data:image/png;base64,")
        with pytest.raises(Exception, match="not an image"):
            client.predict(img=handle_file(str(ROOT / "pyproject.toml")), api_name="/explain")
        assert json.dumps(client.predict(img=handle_file(path), api_name="/predict"))  # still answering
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_note_on_a_narrow_picture_wraps_and_is_never_cut():
    from xory.explain import _header
    from xory.model import Prediction

    p = Prediction(path="x", label="neither", confidences={"neither": 0.6, "bts": 0.4}, method="unfamiliar",
                   similarity=0.4)
    note = "No face found, and the photo is unlike every training photo (similarity 0.40): neither. " * 3
    wide, narrow = _header(p, note, 2400), _header(p, note, 420)
    assert wide.height == 40 + 18 and narrow.height >= 40 + 18 * 4 and narrow.width == 420  # one line; four or more
