"""The model card: one self-contained HTML file with every section, real held-out numbers, embedded images; and the
face-separation measurement on a hand-made case."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from xory.cli import main
from xory.dataset import Sample
from xory.features.cache import PhotoFeatures
from xory.report import SECTIONS, face_separation


def fake(label: str, vector) -> tuple[Sample, PhotoFeatures]:
    v = np.asarray(vector, np.float32)[None]
    return (Sample(f"{label}.jpg", tuple(label.split("/")), label),
            PhotoFeatures("x", (10, 10), np.zeros((1, 4), int), np.ones(1), v, np.zeros(1280)))


def test_face_separation_on_a_hand_made_case():
    rows = [fake("g/a", [0, 0]), fake("g/a", [0.3, 0]), fake("g/b", [1, 0]), fake("g/b", [1, 0.5]),
            fake("g/b", [1, 0.1])]  # b's last two lie 0.4 apart; the first and last of b 0.1 apart: a copy
    sep = face_separation([s for s, _ in rows], [f for _, f in rows])
    assert sep["pairs_within"] == 3 and sep["duplicate_pairs_left_out"] == 1  # a: 0.3, b: 0.5 and 0.4 (0.1 out)
    assert sep["within_median"] == pytest.approx(0.4)
    between = [1.0, np.hypot(1, 0.5), np.hypot(1, 0.1), 0.7, np.hypot(0.7, 0.5), np.hypot(0.7, 0.1)]
    assert sep["pairs_between"] == 6 and sep["between_median"] == pytest.approx(np.median(between))
    assert sep["between_closer_than_within_median"] == 0.0
    assert sep["between_under_match"] == 0.0 and sep["within_over_match"] == 0.0
    assert sep["histogram_overlap"] == 0.0
    assert sep["members"]["g/a"]["nearest_member"] == "g/b"


def test_report_has_every_section_with_real_numbers(heldout_model, small_kpop, small_others, tmp_path, capsys):
    out = tmp_path / "card" / "report.html"
    assert main(["report", str(heldout_model), "--data", str(small_kpop), "--negatives", str(small_others),
                 "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    for key, title in SECTIONS.items():
        assert f'<h2 id="{key}">{title}</h2>' in page
    manifest = json.loads((heldout_model / "manifest.json").read_text())
    held = manifest["training"]["heldout_photos"]
    assert f"{held} photos the model did not train on ({held} held out" in page
    top = manifest["metrics"]["heldout"]["top_error"]
    assert f"<td>group error (labelled photos)</td><td>{top:.3f}</td>" in page
    for label in ("bts/jimin", "exo/chanyeol", "neither"):
        assert f"<h3>{label} <small>" in page  # photos per label
    assert "Thin labels" in page and "exo/kris" in page  # one photo of Kris: thin
    assert "<td>1</td><td>face</td>" in page  # the training table, fold 1 of the face head
    assert "median distance, same member" in page
    # self-contained: every image is embedded, nothing is fetched
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 20 and all(s.startswith("data:image/") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert out.stat().st_size < 3_000_000
