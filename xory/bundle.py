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
from typing import Iterable

import numpy as np

__all__ = ["ModelBundle", "BundleError", "SCHEMA_VERSION", "default_model_dir", "file_sha256", "swap_folder", "owned_model_files", "listed_by_model",
           "readable_by_others"]

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


def swap_folder(new: Path, dest: Path, owned: set[str] | None = None) -> None:
    """Put the complete folder `new` at `dest` by renames: an old `dest` stays whole until `new` is in place.
    With `owned` (the names a tool wrote there before), every other entry of the old `dest` that `new` does not
    hold (a user's .git, notes, a report) is carried over into `new` first: only the tool's own files are
    replaced. Without it, `dest` must be new or empty."""
    if not dest.exists():
        os.replace(new, dest)
        return
    carried: list[str] = []
    try:
        if owned is not None:
            for entry in sorted(dest.iterdir()):
                if entry.name not in owned and not (new / entry.name).exists():
                    os.replace(entry, new / entry.name)
                    carried.append(entry.name)
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / "previous")
    except BaseException:
        for name in carried:  # put the user's entries back where they were
            os.replace(new / name, dest / name)
        raise
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def readable_by_others(tmp: Path) -> None:
    """mkdtemp/mkstemp make a private (0700/0600) folder or file; a model, an export or a split file is for others
    to read too (the usual mode under the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if tmp.is_dir() else 0o666) & ~umask)


def owned_model_files(folder: Path, writes: Iterable[str] = ()) -> set[str]:
    """The names an xory model at `folder` owns (empty for a new or empty folder); BundleError when `folder`
    holds something else, so that `--out` pointed at photos or a file never deletes them, or when a name in
    `writes` (what a save will put there) is taken by an entry that is not the model's."""
    owned, listed = _owned(folder)
    for name in writes:
        entry = folder / name
        if name not in owned and (entry.exists() or entry.is_symlink()):
            why = ("does not match its checksum in manifest.json (changed or damaged since the model was saved)"
                   if name in listed else "is not the model's (manifest.json holds no checksum for it)")
            raise BundleError(f"{entry}: {why}, and a save would replace it; move it away or choose another folder "
                              "(nothing was changed)")
    return owned


def _model_manifest(folder: Path) -> dict | None:
    """The manifest of the xory model at `folder`, or None when there is none (or it is not an xory manifest)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def listed_by_model(path: Path) -> bool:
    """Whether `path` is one of the files the model in its folder lists (its checksum is in that manifest)."""
    files = (_model_manifest(path.parent) or {}).get("files")
    return isinstance(files, dict) and path.name in files


def _owned(folder: Path) -> tuple[set[str], set[str]]:
    """(the names whose bytes match the manifest's checksums, every name the manifest lists)."""
    if not folder.exists():
        return set(), set()
    if not folder.is_dir():
        raise BundleError(f"{folder}: exists and is not a folder; choose a new folder for the model (nothing was "
                          "changed)")
    if not any(folder.iterdir()):
        return set(), set()
    manifest = _model_manifest(folder)
    if manifest is None:
        raise BundleError(f"{folder}: the folder is not empty and is not an xory model; choose a new or empty "
                          "folder for the model (nothing was changed)")
    files = manifest.get("files")
    files = files if isinstance(files, dict) else {}
    # A file counts as the model's only when its bytes match the manifest's checksum: a hand-edited manifest that
    # names a user's file (or a path outside the folder) never gets that file replaced.
    owned = {"manifest.json", *(name for name, digest in files.items()
                                if isinstance(name, str) and Path(name).name == name and (folder / name).is_file()
                                and file_sha256(folder / name) == digest)}
    return owned, {name for name in files if isinstance(name, str)}


@dataclass
class ModelBundle:
    """manifest: JSON-able dict; arrays: named numpy arrays; extra_files: other files to ship (e.g. an .onnx)."""

    manifest: dict
    arrays: dict[str, np.ndarray]
    extra_files: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    def save(self, folder: str | Path) -> Path:
        """Write the bundle to `folder` atomically. An existing `folder` must be empty or an xory model: its own
        files are replaced, anything else in it (a report.html) is kept; any other path is refused untouched."""
        folder = Path(folder).resolve()
        for name in self.extra_files:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..", "manifest.json",
                                                                                  ARRAYS_FILE):
                raise BundleError(f"extra file name {name!r}: give a plain file name other than manifest.json and "
                                  f"{ARRAYS_FILE} (nothing was written)")
        owned = owned_model_files(folder, ["manifest.json", ARRAYS_FILE, *self.extra_files])
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            readable_by_others(tmp)
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.arrays)
            (tmp / ARRAYS_FILE).write_bytes(buf.getvalue())
            for name, src in self.extra_files.items():
                shutil.copyfile(src, tmp / name)
            files = {name: file_sha256(tmp / name) for name in [ARRAYS_FILE, *self.extra_files]}
            manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self.manifest, "files": files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            swap_folder(tmp, folder, owned)
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
        except RecursionError:
            raise BundleError(f"{mpath}: not an xory manifest (nested too deeply)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            what = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise BundleError(f"{mpath}: not an xory model (format {what!r})")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{mpath}: schema version {version!r} is not supported "
                              f"(this xory reads version {SCHEMA_VERSION}); retrain with this version")
        files = manifest.get("files") or {}
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise BundleError(f"{mpath}: \"files\" must map file names to their sha256")
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
        try:
            with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # a pickle, a damaged zip: never run, never a traceback
            raise BundleError(f"{folder / ARRAYS_FILE}: not plain arrays ({type(e).__name__}: {e})") from None
        extra = {n: folder / n for n in files if n != ARRAYS_FILE}
        return cls(manifest=manifest, arrays=arrays, extra_files=extra, folder=folder)
