"""Moving photos without ever losing one. Every move is atomic and never overwrites (a name clash gets a suffix);
every action (a `verify --fix` run, one click in the cleaner) is one line in DIR/_quarantine/log.jsonl and can be
undone. Nothing here deletes a photo."""
from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

__all__ = ["QUARANTINE", "ActionLog", "move_file", "quarantine_path", "free_path"]

QUARANTINE = "_quarantine"  # a root-level "_" folder: dataset.scan ignores it
LOG_NAME = "log.jsonl"
_lock = threading.Lock()


def free_path(path: Path) -> Path:
    """path, or path with a suffix (a-1.jpg, a-2.jpg, ...) when that name is taken."""
    candidate, n = path, 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def move_file(src: Path, dst: Path) -> Path:
    """Move src to dst (or dst with a suffix if taken), atomically and without overwriting. Returns where it went.
    A hard link then an unlink is a no-clobber rename: the file is always at one of the two names, never lost."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = free_path(dst)
        try:
            os.link(src, target)
        except FileExistsError:
            continue  # taken in the meantime: the next suffix
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, getattr(errno, "EOPNOTSUPP", 95)):
                raise
            if target.exists():  # no hard links here: a rename after a last check
                continue
            os.replace(src, target)
            return target
        os.unlink(src)
        return target


def quarantine_path(root: Path, path: Path) -> Path:
    """Where a photo goes in quarantine: root/_quarantine/<its path under root>, so its label stays readable."""
    root, path = Path(root).resolve(), Path(path).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return root / QUARANTINE / rel


class ActionLog:
    """The JSON-lines log of one data folder. An entry: {"id", "time", "action", "moves": [{"src", "dst"}], ...};
    an undo is an entry {"action": "undo", "undoes": id, "moves": [...]} of the moves that reversed it.
    Paths are stored relative to the folder when inside it, so the folder can be moved as a whole."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.path = self.root / QUARANTINE / LOG_NAME

    def _rel(self, p: Path) -> str:
        p = Path(p).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def abs(self, p: str) -> Path:
        return self.root / p if not Path(p).is_absolute() else Path(p)

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{self.path}: line {n} is not valid JSON (edited by hand?)") from None
        return out

    def record(self, action: str, moves: list[tuple[Path, Path]] = (), **info) -> dict:
        """Append one action (flushed and synced before returning)."""
        with _lock:
            entries = self.entries()
            entry = {"id": max((e["id"] for e in entries), default=0) + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "action": action, "moves": [{"src": self._rel(s), "dst": self._rel(d)} for s, d in moves], **info}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return entry

    def pending(self) -> list[dict]:
        """Actions not undone yet, oldest first."""
        entries = self.entries()
        undone = {e["undoes"] for e in entries if e["action"] == "undo"}
        return [e for e in entries if e["action"] != "undo" and e["id"] not in undone]

    def undo(self, all: bool = False) -> list[dict]:
        """Reverse the last action (or every one, newest first). A photo whose original name is taken comes back
        with a suffix; one that is gone from where the action put it is reported in "missing"."""
        done = []
        for entry in reversed(self.pending()):
            back, missing = [], []
            for m in reversed(entry["moves"]):
                src, dst = self.abs(m["src"]), self.abs(m["dst"])
                if dst.is_file():
                    back.append((dst, move_file(dst, src)))
                else:
                    missing.append(m["dst"])
            done.append(self.record("undo", back, undoes=entry["id"], undone_action=entry["action"],
                                    missing=missing))
            if not all:
                break
        return done
