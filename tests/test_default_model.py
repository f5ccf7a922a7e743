"""The bundled model (models/bts-exo) on photos it never trained on (its split.json lists the held-out ones)."""
from __future__ import annotations

import hashlib

import pytest

import xory
from conftest import BEARS, KPOP, PETS, ROOT
from xory.split import load_split

HELD_OUT = load_split(ROOT / "models" / "bts-exo" / "split.json")["test"]

# (folder, file, member named on the largest face): every one of them held out from training
MEMBER_PHOTOS = [
    ("bts/jimin", "HannahGuo__2483692296129588959_2483692291910078765.jpg", "jimin"),
    ("bts/jimin", "HannahGuo__jimin8.jpg", "jimin"),
    ("bts/rm", "HannahGuo__2621753597517803526_2621753593340225178.jpg", "rm"),
    ("bts/suga", "HannahGuo__2524790137358189534.jpg", "suga"),
    ("exo/chanyeol", "divyapusuluru__exosc__exosc-chan.jpg", "chanyeol"),
    ("exo/chanyeol", "elayjjang__images__chan.jpg", "chanyeol"),
    ("exo/baekhyun", "bzhyz__baekhyun.jpg", "baekhyun"),
    ("exo/kai", "Vhecz__exo__kai.jpg", "kai"),
]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_default_model_is_the_documented_one(default_model):
    m = default_model.manifest
    assert m["labels"]["top"] == ["bts", "exo", "neither"]
    assert set(m["labels"]["tree"]["bts"]) == {"jhope", "jimin", "jin", "jungkook", "rm", "suga", "v"}
    assert m["heads"]["face"]["unknown_below"] == 0.25
    held = m["metrics"]["heldout"]
    assert held["photos"] >= 400 and held["negatives"] >= 40


@pytest.mark.parametrize("folder, name, member", MEMBER_PHOTOS)
def test_names_members_of_held_out_photos(default_model, folder, name, member):
    path = KPOP / folder / name
    assert sha(path) in HELD_OUT
    p = default_model.predict(path)
    group = folder.split("/")[0]
    assert p.label == group and p.faces[0].label == member and p.faces[0].group == group


def test_group_photo_gives_several_named_faces(default_model):
    path = KPOP / "bts" / "_group" / "divyapusuluru__bts__d1.jpg"
    assert sha(path) in HELD_OUT
    p = default_model.predict(path)
    assert p.label == "bts" and p.method == "faces"
    names = [f.label for f in p.faces]
    assert len(names) == 6 and {"rm", "v", "jin", "jimin"} <= set(names)
    assert all(f.group == "bts" for f in p.faces)


def test_one_photo_never_names_two_faces_the_same_member(default_model):
    """Named one by one, two faces of this held-out photo were both jungkook and two both jimin; named jointly
    (each member at most once per photo), they are all different members. A collage of one person keeps its name:
    no face is renamed to a member it gives less than 10 %."""
    path = KPOP / "bts" / "_group" / "divyapusuluru__bts__sm2.jpg"
    assert sha(path) in HELD_OUT
    p = default_model.predict(path)
    names = [f.label for f in p.faces if f.group == "bts"]
    assert p.label == "bts" and len(names) >= 5 and len(set(names)) == len(names), names
    collage = KPOP / "bts" / "_group" / "irenechang1510__train__BTS_members__everything_you_need_to...__1_.jpg"
    faces = default_model.predict(collage).faces
    assert [f.label for f in faces].count("jimin") >= 5 and faces[0].label == "jimin"


@pytest.mark.parametrize("path", [BEARS / "grizzly" / "BachNgoH__00000000.jpg", PETS / "cats" / "BachNgoH__cat.4001.jpg"])
def test_a_photo_unlike_any_training_photo_is_neither(default_model, path):
    """No face, and the whole photo is far from every training photo (the whole-image head said bts or exo)."""
    p = default_model.predict(path)
    assert p.faces == [] and p.method == "unfamiliar" and p.similarity < 0.5
    assert p.label == "neither" and p.confidences["neither"] == pytest.approx(1 - p.similarity, abs=0.05)
    assert "unlike every training photo" in str(p)
    ex = default_model.explain(path)  # the heat map is the head's own class: the answer came from the similarity
    assert ex.cam_class in {"bts", "exo"} and f"which alone would answer '{ex.cam_class}'" in str(ex)


def test_a_held_out_bts_photo_without_a_face_is_still_judged_from_the_whole_photo(default_model):
    path = KPOP / "bts" / "suga" / "irenechang1510__train_BTS_Members_Would_Do_If_They_Fell_In____5.jpg"
    assert sha(path) in HELD_OUT
    p = default_model.predict(path)
    assert p.faces == [] and p.method == "image" and p.similarity > 0.8 and p.label == "bts"


def test_python_api_shapes(default_model):
    p = xory.load().predict(KPOP / "exo" / "kai" / "Vhecz__exo__kai.jpg")
    assert isinstance(p, xory.Prediction) and isinstance(p.faces[0], xory.Face)
    assert list(p.confidences) == sorted(p.confidences, key=p.confidences.get, reverse=True)
    assert p.to_label()["label"] == "exo"


def test_notebook_inputs_pil_images_and_arrays(default_model):
    """A PIL image in any mode, an array (uint8 or 0..1 floats, channels last or first) read like the file."""
    import numpy as np
    from PIL import Image

    path = KPOP / "exo" / "kai" / "Vhecz__exo__kai.jpg"
    want = default_model.predict(path)
    im = Image.open(path)
    rgb = np.asarray(im.convert("RGB"))
    for source in [im, im.convert("CMYK"), rgb, rgb / 255.0, np.moveaxis(rgb, -1, 0), bytearray(path.read_bytes())]:
        p = default_model.predict(source)
        assert p.error is None and p.label == want.label == "exo" and p.faces[0].label == "kai", type(source)
    assert default_model.predict(np.zeros((2, 3, 4, 5))).error.startswith("an array of shape (2, 3, 4, 5) is not")
    assert default_model.explain(im.convert("CMYK")).prediction.faces[0].label == "kai"
