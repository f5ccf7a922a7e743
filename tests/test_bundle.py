"""Model bundles: no pickle, checksums, schema version, atomic save."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from xory.bundle import SCHEMA_VERSION, BundleError, ModelBundle


@pytest.fixture
def bundle_copy(small_model, tmp_path):
    return shutil.copytree(small_model, tmp_path / "model")


def test_bundle_files_and_manifest(small_model):
    names = sorted(p.name for p in small_model.iterdir())
    assert names == ["heads.npz", "manifest.json", "split.json"] or names == ["heads.npz", "manifest.json"]
    m = json.loads((small_model / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION and m["format"] == "xory-bundle"
    assert m["labels"]["top"] == ["bts", "exo", "neither"]
    assert "jimin" in m["labels"]["tree"]["bts"] and "chanyeol" in m["labels"]["tree"]["exo"]
    assert set(m["files"]) >= {"heads.npz"}
    with np.load(small_model / "heads.npz", allow_pickle=False) as z:  # plain arrays only
        assert z["face_W"].shape == (len(m["heads"]["face"]["classes"]), 128)
        assert z["image_W"].shape == (3, 1280)


def test_tampered_array_is_refused(bundle_copy):
    data = bytearray((bundle_copy / "heads.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "heads.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="file heads.npz does not match its checksum"):
        ModelBundle.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "heads.npz").unlink()
    with pytest.raises(BundleError, match="file heads.npz is missing"):
        ModelBundle.load(bundle_copy)


def test_other_schema_version_is_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema version 99 is not supported"):
        ModelBundle.load(bundle_copy)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(BundleError, match="model folder not found"):
        ModelBundle.load(tmp_path / "nothing")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        ModelBundle.load(tmp_path)


def test_save_replaces_atomically(bundle_copy):
    b = ModelBundle.load(bundle_copy)
    b.manifest["note"] = "second save"
    b.save(bundle_copy)
    again = ModelBundle.load(bundle_copy)
    assert again.manifest["note"] == "second save"
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_never_deletes_what_is_not_a_model(bundle_copy, tmp_path):
    """`--out` pointed at a folder of photos, at a file, or at the data folder: refused, nothing touched."""
    b = ModelBundle.load(bundle_copy)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"my only copy")
    with pytest.raises(BundleError, match="is not empty and is not an xory model"):
        b.save(photos)
    assert (photos / "me.jpg").read_bytes() == b"my only copy" and sorted(photos.iterdir()) == [photos / "me.jpg"]
    with pytest.raises(BundleError, match="exists and is not a folder"):
        b.save(photos / "me.jpg")
    assert (photos / "me.jpg").read_bytes() == b"my only copy"


def test_resave_replaces_its_own_files_and_keeps_the_rest(bundle_copy):
    (bundle_copy / "report.html").write_text("<p>the card</p>")
    ModelBundle.load(bundle_copy).save(bundle_copy)
    assert (bundle_copy / "report.html").read_text() == "<p>the card</p>"
    assert (bundle_copy.stat().st_mode & 0o055) == 0o055  # readable by others, not mkdtemp's 0700
    b = ModelBundle.load(bundle_copy)
    # a manifest edited by hand to claim a user's file (its checksum does not match) never gets that file replaced
    (bundle_copy / "notes.txt").write_text("my notes")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"]["notes.txt"] = "0" * 64
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    b.save(bundle_copy)
    assert (bundle_copy / "notes.txt").read_text() == "my notes"
    assert "notes.txt" not in ModelBundle.load(bundle_copy).manifest["files"]


def test_a_damaged_model_file_is_named_and_kept_and_extra_names_must_be_plain(bundle_copy, tmp_path):
    b = ModelBundle.load(bundle_copy)
    with open(bundle_copy / "heads.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="heads.npz: does not match its checksum in manifest.json"):
        b.save(bundle_copy)
    for name in ["../escaped.txt", "sub/x.txt", "manifest.json", "heads.npz", "", ".."]:
        bad = ModelBundle(manifest=b.manifest, arrays=b.arrays, extra_files={name: bundle_copy / "manifest.json"})
        with pytest.raises(BundleError, match="give a plain file name"):
            bad.save(tmp_path / "new")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "new").exists()


def test_train_refuses_a_non_model_out_before_any_work(small_kpop, tmp_path):
    from xory.cli import main

    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["train", str(small_kpop), "--out", str(tmp_path), "--quiet"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("labels"), "does not describe a usable model (KeyError: 'labels')"),
    (lambda m: m["labels"].update(top=["a", "b"]), "head 'face' has classes outside labels.top"),
    (lambda m: m.update(mode="bogus"), "mode 'bogus' is not 'faces' or 'image'"),
    (lambda m: m.update(heads={}), "a faces-mode model needs a face head and an image head"),
    (lambda m: m.pop("features"), "does not describe a usable model (KeyError: 'features')"),
])
def test_a_manifest_that_makes_no_model_is_refused_clearly(bundle_copy, edit, message):
    import xory

    m = json.loads((bundle_copy / "manifest.json").read_text())
    edit(m)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        xory.load(bundle_copy)


def test_a_manifest_that_is_not_an_object_is_refused(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not an xory model"):
        ModelBundle.load(bundle_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(files=["heads.npz"]), '"files" must map file names to their sha256'),
    (lambda m: m.update(files=5), '"files" must map file names to their sha256'),
    (lambda m: m["labels"].update(top=["bts", "bts", "neither"]), "labels.top names a class twice"),
    (lambda m: m["features"]["image"].update(file="../../../etc/passwd"), "is not one of the bundle's checked files"),
])
def test_more_manifests_that_make_no_model(bundle_copy, edit, message):
    import xory

    m = json.loads((bundle_copy / "manifest.json").read_text())
    edit(m)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        xory.load(bundle_copy)


def test_arrays_of_the_wrong_shape_or_a_pickle_are_refused(bundle_copy):
    import hashlib

    import xory

    def rewrite(**arrays):
        with np.load(bundle_copy / "heads.npz") as z:
            data = {k: z[k] for k in z.files}
        data.update(arrays)
        np.savez(bundle_copy / "heads.npz", **data)
        m = json.loads((bundle_copy / "manifest.json").read_text())
        m["files"]["heads.npz"] = hashlib.sha256((bundle_copy / "heads.npz").read_bytes()).hexdigest()
        (bundle_copy / "manifest.json").write_text(json.dumps(m))

    rewrite(face_W=np.zeros((3, 7), np.float32))
    with pytest.raises(BundleError, match=r"heads.npz: face_W must be \(20, 128\) finite numbers"):
        xory.load(bundle_copy)
    rewrite(face_W=np.full((20, 128), np.nan, np.float32))
    with pytest.raises(BundleError, match="face_W must be"):
        xory.load(bundle_copy)
    rewrite(face_W=np.zeros((20, 128), np.float32), image_ref=np.zeros((5, 64), np.float16))
    with pytest.raises(BundleError, match=r"heads.npz: image_ref must be \(n, 1280\) finite numbers"):
        xory.load(bundle_copy)
    rewrite(face_W=np.array([{"x": 1}] * 20, dtype=object))
    with pytest.raises(BundleError, match="heads.npz: not plain arrays"):
        xory.load(bundle_copy)
