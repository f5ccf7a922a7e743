"""The model folder: manifest.json + arrays (.npz, .onnx). No pickle anywhere: loading a model never runs code.

Saved atomically (a temp folder beside the target, then rename); loading checks the schema version and every
file's sha256, and names the file that is missing or altered."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ModelBundle", "BundleError", "SCHEMA_VERSION", "default_model_dir", "file_sha256", "swap_folder"]

SCHEMA_VERSION = 1
FORMAT = "xory-bundle"
ARRAYS_FILE = "heads.npz"


class BundleError(ValueError):
    """A model folder that cannot be used, with the reason."""


def default_model_dir() -> Path:
    """models/bts-exo beside the package (a checkout or an editable install), or $XORY_MODEL."""
    env = os.environ.get("XORY_MODEL")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models" / "bts-exo"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def swap_folder(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest` by renames: an old `dest` stays whole until `new` is in place."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / "previous")
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


@dataclass
class ModelBundle:
    """manifest: JSON-able dict; arrays: named numpy arrays; extra_files: other files to ship (e.g. an .onnx)."""

    manifest: dict
    arrays: dict[str, np.ndarray]
    extra_files: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder).resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.arrays)
            (tmp / ARRAYS_FILE).write_bytes(buf.getvalue())
            for name, src in self.extra_files.items():
                shutil.copyfile(src, tmp / name)
            files = {name: file_sha256(tmp / name) for name in [ARRAYS_FILE, *self.extra_files]}
            manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self.manifest, "files": files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            swap_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.manifest, self.folder = manifest, folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ModelBundle":
        folder = Path(folder)
        mpath = folder / "manifest.json"
        if not folder.is_dir():
            raise BundleError(f"{folder}: model folder not found")
        if not mpath.is_file():
            raise BundleError(f"{folder}: not a model folder (manifest.json is missing)")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath}: not valid JSON ({e})") from None
        if manifest.get("format") != FORMAT:
            raise BundleError(f"{mpath}: not an xory model (format {manifest.get('format')!r})")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{mpath}: schema version {version!r} is not supported "
                              f"(this xory reads version {SCHEMA_VERSION}); retrain with this version")
        files = manifest.get("files") or {}
        if ARRAYS_FILE not in files:
            raise BundleError(f"{mpath}: lists no {ARRAYS_FILE}")
        for name, digest in files.items():
            path = folder / name
            if Path(name).name != name:
                raise BundleError(f"{mpath}: file name {name!r} is not a plain name")
            if not path.is_file():
                raise BundleError(f"{folder}: file {name} is missing")
            if file_sha256(path) != digest:
                raise BundleError(f"{folder}: file {name} does not match its checksum in manifest.json "
                                  "(changed or damaged)")
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        extra = {n: folder / n for n in files if n != ARRAYS_FILE}
        return cls(manifest=manifest, arrays=arrays, extra_files=extra, folder=folder)
