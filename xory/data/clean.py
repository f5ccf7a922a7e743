"""`xory clean MODEL DATA_DIR`: review the photos of one folder worst first, move or quarantine the mislabelled
ones, retrain in seconds. Like fastai's ImageClassifierCleaner, but nothing is deleted, every action is logged
in DATA_DIR/_quarantine/log.jsonl and undoable (`xory clean --undo DATA_DIR`), and the face that disagrees with
the label is boxed.

Loss of a photo: -log p(its top-level label) from the model's answer, plus, for a photo in a member folder,
-log p(that member) for its largest face (the face training uses). The features come from the cache, so scoring
and retraining cost seconds."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (at module level: the page's event handlers are typed with gr.SelectData)

from ..dataset import NEITHER, _label_of, scan  # noqa: E402
from ..features.cache import PhotoFeatures  # noqa: E402
from ..model import Model, Prediction  # noqa: E402
from .moves import ActionLog, move_file, quarantine_path  # noqa: E402

__all__ = ["Item", "Cleaner", "build_cleaner_app", "clean_app"]

EPS = 1e-6  # a probability floor: a label the model has never seen gets loss -log(EPS) = 13.8
NEG_PREFIX = NEITHER + ":"  # folders of the negatives root are named "neither:<folder>"


@dataclass
class Item:
    """One photo under review."""

    path: str
    folder: str  # its folder, e.g. "bts/jimin", "bts/_group", "neither:itzy/yeji"
    label: tuple[str, ...]
    feats: PhotoFeatures
    loss: float = 0.0
    prediction: Prediction | None = None
    wrong: tuple[int, ...] = ()  # indices of the faces that disagree with the label

    @property
    def answer(self) -> str:
        """What the model says, at the label's depth: "exo/kai 93%" or "neither 80%"."""
        p = self.prediction
        if len(self.label) > 1 and p.faces:
            f = p.faces[0]
            return f"{f.group if f.group == NEITHER else f'{f.group}/{f.label}'} {f.confidence:.0%}"
        return f"{p.label} {p.confidences.get(p.label, 0):.0%}"


class Cleaner:
    """The cleaner's state and actions, independent of any page (the page only calls these)."""

    def __init__(self, model_dir: str | Path, data: str | Path, negatives: str | Path | None = None,
                 out: str | Path | None = None, progress: bool = False):
        self.model_dir, self.out = Path(model_dir), Path(out or model_dir)
        self.model = Model.load(self.model_dir)
        if negatives is None:  # the negatives the model was trained with, when they are still there
            negatives = self.model.manifest.get("training", {}).get("negatives")
            negatives = negatives if negatives and Path(negatives).is_dir() else None
        self.data, self.negatives = Path(data).resolve(), Path(negatives).resolve() if negatives else None
        self.log = ActionLog(self.data)
        self.progress = progress
        self.items: list[Item] = []
        self.reload()

    # ---- reading and scoring
    def reload(self) -> None:
        """Rescan the folders (features from the cache) and score every photo with the current model."""
        from ..train import TrainConfig, load_table

        ds = scan(self.data, self.negatives)
        table = load_table(TrainConfig(data=str(self.data), out="", progress=self.progress), ds, lambda s: None)
        self.skipped = table.skipped
        self.items = [Item(s.path, s.source, s.label, f) for s, f in zip(table.samples, table.feats)]
        self.score(self.items)

    def score(self, items: list[Item]) -> None:
        head = self.model.face_head
        for it in items:
            p = self.model.predict_features(it.feats, it.path)
            it.prediction = p
            loss = -math.log(max(p.confidences.get(it.label[0], 0.0), EPS))
            wrong = [i for i, f in enumerate(p.faces) if f.group != it.label[0]]
            if len(it.label) > 1 and p.faces and head is not None:
                leaf = "/".join(it.label)
                proba = head.proba(it.feats.face_vectors[:1])[0]
                p_leaf = float(proba[head.classes.index(leaf)]) if leaf in head.classes else 0.0
                loss += -math.log(max(p_leaf, EPS))
                wrong = [0] if f"{p.faces[0].group}/{p.faces[0].label}" != leaf else []
            it.loss, it.wrong = loss, tuple(wrong)

    def folders(self) -> dict[str, int]:
        """Every folder with its number of photos under review."""
        out: dict[str, int] = {}
        for it in self.items:
            out[it.folder] = out.get(it.folder, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (kv[0].startswith(NEG_PREFIX), kv[0])))

    def kept(self) -> set[str]:
        """Content hashes of the photos marked 'keep' (hidden from review until the mark is undone)."""
        return {e["sha256"] for e in self.log.pending() if e["action"] == "keep"}

    def worst(self, folder: str, n: int | None = None) -> list[Item]:
        kept = self.kept()
        rows = [it for it in self.items if it.folder == folder and it.feats.sha256 not in kept]
        return sorted(rows, key=lambda it: -it.loss)[:n]

    def find(self, path: str) -> Item:
        for it in self.items:
            if it.path == path:
                return it
        raise ValueError(f"{path}: not under review (moved or gone?)")

    # ---- actions (each one logged and undoable)
    def folder_path(self, folder: str) -> tuple[Path, tuple[str, ...]]:
        """A folder name ("exo/kai", "neither:itzy/yeji") -> (its path, its label). New folders are allowed."""
        neg = folder.startswith(NEG_PREFIX)
        rel = Path(folder[len(NEG_PREFIX):] if neg else folder)
        if not rel.parts or rel.is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in rel.parts):
            raise ValueError(f"{folder!r}: not a folder name under the data folder")
        if neg and self.negatives is None:
            raise ValueError(f"{folder!r}: no negatives folder was given (--negatives)")
        root = self.negatives if neg else self.data
        label = (NEITHER,) if neg else _label_of(rel)
        if label is None or not label:
            raise ValueError(f"{folder!r}: photos there would carry no label")
        return root / rel, (label[:1] if label[0] == NEITHER else label)

    def move(self, path: str, folder: str) -> dict:
        it = self.find(path)
        target, label = self.folder_path(folder)
        if target.resolve() == Path(it.path).parent.resolve():
            raise ValueError(f"{Path(path).name} is already in {folder}")
        dst = move_file(Path(it.path), target / Path(it.path).name)
        entry = self.log.record("move", [(Path(it.path), dst)], sha256=it.feats.sha256, folder_from=it.folder,
                                folder_to=folder)
        it.path, it.folder, it.label = str(dst), folder, label
        self.score([it])
        return entry

    def quarantine(self, path: str) -> dict:
        it = self.find(path)
        root = self.negatives if it.folder.startswith(NEG_PREFIX) else self.data
        dst = move_file(Path(it.path), quarantine_path(root, Path(it.path)))
        entry = self.log.record("quarantine", [(Path(it.path), dst)], sha256=it.feats.sha256, folder_from=it.folder)
        self.items.remove(it)
        return entry

    def keep(self, path: str) -> dict:
        it = self.find(path)
        return self.log.record("keep", [], sha256=it.feats.sha256, path=it.path, folder_from=it.folder)

    def undo(self, all: bool = False) -> list[dict]:
        done = self.log.undo(all=all)
        if any(e["moves"] for e in done):
            self.reload()
        return done

    def retrain(self) -> tuple[float, dict]:
        """Train the same kind of model on the folders as they are now (features cached), save it atomically to
        `out`, and rescore. Returns (seconds, held-out metrics or {})."""
        from ..train import SPLIT_FILE, TrainConfig, train

        t0 = time.time()
        old = self.model.manifest.get("training", {})
        split = self.model_dir / SPLIT_FILE  # the photos the model held out stay held out (by content hash)
        split = str(split) if self.model.manifest.get("split_file") and split.is_file() else None
        cfg = TrainConfig(data=str(self.data), out=str(self.out), negatives=str(self.negatives) if self.negatives
                          else None, mode=self.model.manifest.get("mode", "auto"), progress=False, split=split,
                          folds=0,  # no cross-validation table: the button is for a quick look (`xory train` has it)
                          holdout=0.0 if split else float(old.get("holdout") or 0.0), seed=int(old.get("seed") or 0))
        folder, manifest = train(cfg, log=lambda s: None)
        self.model, self.model_dir = Model.load(folder), Path(folder)
        self.score(self.items)
        return time.time() - t0, manifest.get("metrics", {}).get("heldout", {})


# ---- the page
def _tile(it: Item, side: int = 320):
    from ..draw import BAD, GOOD, boxes_image
    from ..images import ImageError, open_image

    try:
        img = open_image(it.path).image
    except ImageError:
        from PIL import Image

        img = Image.new("RGB", (side, side), (200, 200, 200))
    faces = it.prediction.faces
    return boxes_image(img, [f.box for f in faces], [f"{f.label} {f.confidence:.0%}" for f in faces],
                       [BAD if i in it.wrong else GOOD for i in range(len(faces))], max_side=side)


def build_cleaner_app(cleaner: Cleaner, per_page: int = 36) -> gr.Blocks:
    def choices() -> list[tuple[str, str]]:
        return [(f"{k} ({v})", k) for k, v in cleaner.folders().items()]

    def page(folder: str | None):
        rows = cleaner.worst(folder, per_page) if folder else []
        return [(_tile(it), f"{it.loss:.2f} · {it.answer}") for it in rows], [it.path for it in rows]

    def show(folder):
        tiles, paths = page(folder)
        return gr.update(value=tiles, selected_index=None), paths, None, "Pick a photo."

    def select(paths: list[str], evt: gr.SelectData):
        it = cleaner.find(paths[evt.index])
        conf = ", ".join(f"{k} {v:.0%}" for k, v in it.prediction.confidences.items())
        return it.path, (f"**{Path(it.path).name}** in `{it.folder}` · loss {it.loss:.2f} · model says "
                         f"{it.answer} ({conf}) · {len(it.prediction.faces)} face(s)")

    def act(kind: str, folder: str, selected: str | None, target: str | None):
        try:
            if kind == "undo":
                done = cleaner.undo()
                note = f"undid {done[0]['undone_action']}" if done else "nothing to undo"
            elif kind == "retrain":
                seconds, metrics = cleaner.retrain()
                extra = f"; held-out top-level error {metrics['top_error']:.3f}" if "top_error" in metrics else ""
                note = f"retrained and saved {cleaner.model_dir} in {seconds:.1f} s{extra}"
            elif not selected:
                raise ValueError("pick a photo first")
            elif kind == "move":
                if not target:
                    raise ValueError("pick a folder to move it to")
                cleaner.move(selected, target)
                note = f"moved {Path(selected).name} to {target}"
            elif kind == "quarantine":
                cleaner.quarantine(selected)
                note = f"quarantined {Path(selected).name}"
            else:
                cleaner.keep(selected)
                note = f"kept {Path(selected).name}"
        except (ValueError, FileNotFoundError, OSError) as e:
            note = f"**error:** {e}"
        tiles, paths = page(folder)
        names = choices()
        return (gr.update(value=tiles, selected_index=None), paths, None, "Pick a photo.", note,
                gr.update(choices=names, value=folder), gr.update(choices=names, value=target))

    with gr.Blocks(title="xory clean") as demo:
        gr.Markdown(f"# xory clean\n`{cleaner.data}` with the model `{cleaner.model_dir}`. Worst photos first "
                    "(loss · what the model says); a red box is the face that disagrees with the folder. "
                    "Every action is logged and undoable; nothing is deleted.")
        paths, selected = gr.State([]), gr.State(None)
        first = next(iter(cleaner.folders()), None)
        folder = gr.Dropdown(choices(), value=first, label="Folder")
        gallery = gr.Gallery(label="Worst first", columns=6, height=620, object_fit="contain", allow_preview=False)
        info = gr.Markdown("Pick a photo.")
        with gr.Row():
            target = gr.Dropdown(choices(), value=None, label="Move to", allow_custom_value=True, scale=3)
            move = gr.Button("Move", variant="primary")
            quarantine = gr.Button("Quarantine", variant="stop")
            keep = gr.Button("Keep")
        with gr.Row():
            undo_btn = gr.Button("Undo last action")
            retrain = gr.Button("Retrain and rescore")
        status = gr.Markdown()
        outputs = [gallery, paths, selected, info, status, folder, target]
        folder.change(show, folder, [gallery, paths, selected, info])
        demo.load(show, folder, [gallery, paths, selected, info])
        gallery.select(select, paths, [selected, info])
        for btn, kind in [(move, "move"), (quarantine, "quarantine"), (keep, "keep"), (undo_btn, "undo"),
                          (retrain, "retrain")]:
            btn.click(lambda f, s, t, kind=kind: act(kind, f, s, t), [folder, selected, target], outputs)
    return demo


def clean_app(model_dir: str | Path, data: str | Path, negatives: str | Path | None = None,
              out: str | Path | None = None, host: str = "127.0.0.1", port: int = 7861) -> None:
    cleaner = Cleaner(model_dir, data, negatives, out, progress=True)
    print(f"xory clean: {len(cleaner.items)} photos under {data}"
          + (f" and {cleaner.negatives}" if cleaner.negatives else "") + f"; open http://{host}:{port}/", flush=True)
    build_cleaner_app(cleaner).queue(default_concurrency_limit=1).launch(server_name=host, server_port=port,
                                                                         footer_links=["api"])

