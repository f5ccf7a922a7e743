"""The Gradio app: upload or paste a photo, see the answer and the named faces. Named API endpoints:
/predict (the gr.Label shape, image parameter `img`, as the original "BTS or EXO" page expects) and
/predict_faces (the `xory predict --json` object). Served from FastAPI with CORS open, so a page on any origin
can call it."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .model import Model, Prediction  # noqa: E402

__all__ = ["build_app", "build_server", "serve", "example_photos"]

SHARED_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "kpop"


def example_photos(folder: Path | None = None, n: int = 6) -> list[str]:
    """A few photos to try, from `folder` (or the shared data next to a checkout, when it is there)."""
    folder = Path(folder) if folder else SHARED_EXAMPLES
    if not folder.is_dir():
        return []
    picks: list[str] = []
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        big = [f for f in files if f.stat().st_size > 40_000]
        if big:
            picks.append(str(big[len(big) // 2]))
    return picks[:: max(1, len(picks) // n)][:n]


def _title(model: Model) -> str:
    groups = model.groups
    if len(groups) == 2:
        return f"{groups[0].upper()} or {groups[1].upper()}?"
    return " or ".join(groups[:4]) + "?"


def _uploaded_only(examples: list[str]):
    """A check that a photo path came from an upload (or is one of our examples). Gradio mounted in FastAPI does
    not refuse a request that names a file on the server ({"path": "/etc/passwd"}): without this, any page
    could read the server's photos back through /explain."""
    from gradio.utils import get_upload_folder

    uploads = Path(get_upload_folder()).resolve()
    allowed = {Path(e).resolve() for e in examples}

    def check(img: str) -> None:
        path = Path(img).resolve()
        if not (path.is_relative_to(uploads) or path in allowed):
            raise gr.Error(f"{Path(img).name}: only uploaded photos are accepted")

    return check


def build_app(model: Model, examples: list[str] | None = None, page_link: str | None = None) -> gr.Blocks:
    uploaded = _uploaded_only(examples or [])

    def run(img: str | None) -> Prediction:
        if not img:
            raise gr.Error("no photo given")
        uploaded(img)
        p = model.predict(img, name=Path(img).name)
        if p.error:
            raise gr.Error(f"{p.path}: {p.error}")
        return p

    def predict(img: str) -> dict[str, float]:
        """Classify a photo: the top-level answer with every class's confidence (gr.Label)."""
        return run(img).confidences

    def predict_faces(img: str) -> dict:
        """Classify a photo: the answer, the confidences, and every face's box, member, group and confidence."""
        return run(img).to_json()

    def show(img: str | None):
        p = run(img)
        boxes = [((*f.box,), f"{f.label} {f.confidence:.0%}") for f in p.faces]
        note = p.how[0].upper() + p.how[1:] + "."
        return p.confidences, (img, boxes), note, p.to_json()

    def why(img: str | None):
        if not img:
            raise gr.Error("no photo given")
        uploaded(img)
        ex = model.explain(img, name=Path(img).name, grid=5, max_faces=3)  # a 5x5 grid keeps it to seconds
        if ex.prediction.error:
            raise gr.Error(f"{ex.prediction.path}: {ex.prediction.error}")
        return ex

    def explain(img: str) -> dict:
        """Why this answer: each face's weight and contribution to every class and its occlusion map, or the
        whole-image class activation map; `heatmap` is the explanation picture as a PNG data URL."""
        return why(img).to_json(heatmap=True)

    def show_why(img: str | None):
        ex = why(img)
        return ex.image, "```\n" + str(ex) + "\n```"

    with gr.Blocks(title=_title(model), delete_cache=(900, 900)) as demo:  # uploads older than 15 min go
        gr.Markdown(f"# {_title(model)}\nUpload or paste a photo. Each face is found, named, and the faces "
                    "together give the answer; a photo without a face is judged as a whole."
                    + (f" Many photos at once: [the web page]({page_link})." if page_link else ""))
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"])
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=photo)
            with gr.Column():
                label = gr.Label(num_top_classes=len(model.top), label="Answer")
                faces = gr.AnnotatedImage(label="Faces")
                note = gr.Markdown()
                with gr.Accordion("JSON", open=False):
                    details = gr.JSON(label="predict_faces")
        with gr.Accordion("Why? Explain the answer", open=False):
            why_button = gr.Button("Explain")
            why_image = gr.Image(type="pil", label="Explanation", show_label=False, interactive=False, format="png")
            why_note = gr.Markdown()
        why_button.click(show_why, inputs=photo, outputs=[why_image, why_note], api_visibility="private")
        gr.on([button.click, photo.upload], show, inputs=photo, outputs=[label, faces, note, details],
              api_visibility="private")
        # API-only endpoints: a file input, so that every photo goes through xory's own opener and errors
        with gr.Row(visible=False):
            api_img = gr.File(type="filepath", label="img")
            api_label = gr.Label()
            api_json = gr.JSON()
            api_go = gr.Button()
        api_go.click(predict, inputs=api_img, outputs=api_label, api_name="predict")
        api_go.click(predict_faces, inputs=api_img, outputs=api_json, api_name="predict_faces")
        api_go.click(explain, inputs=api_img, outputs=api_json, api_name="explain")
    return demo


def build_server(model: Model, examples: list[str] | None = None):
    """FastAPI app with the Gradio app at /, the web page at /web/ (xory/web, built from web/), and CORS open to
    any origin."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from .export import WEB_DIR, about_html

    app = FastAPI(title="xory")
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    about = about_html(model.bundle.folder)
    # before the Gradio mount, which catches every path under /
    app.add_api_route("/web", lambda: RedirectResponse("web/"), include_in_schema=False)
    app.add_api_route("/web/about.html", lambda: HTMLResponse(about), include_in_schema=False)
    app.mount("/web", StaticFiles(directory=WEB_DIR, html=True), name="web")
    demo = build_app(model, examples, page_link="web/")
    demo.queue(default_concurrency_limit=2)
    app = gr.mount_gradio_app(app, demo, path="/", max_file_size="25mb", footer_links=["api"])
    # Gradio refuses request paths outside its upload folder only in an app it "launched"; a mounted app is
    # served all the same, so it gets the same check (and run() checks again)
    demo.has_launched = True
    return app


def serve(model_dir: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          examples: str | None = None) -> None:
    import uvicorn

    model = Model.load(model_dir)
    model.extractor  # noqa: B018  (load the embedders now, not on the first request)
    app = build_server(model, example_photos(Path(examples) if examples else None))
    print(f"xory: serving {model.bundle.folder} at http://{host}:{port}/  (API: /predict, /predict_faces, /explain; "
          f"many photos: http://{host}:{port}/web/)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
