"""Real-browser check of the reports: headless Chromium renders them, not blank, no errors;
the input and super-resolved panels sit side by side at one size, the flip view never moves, and
a printout holds both mosaics.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped with that reason where it is
absent. Run alone with ``python -m pytest -m browser tests/test_reports_browser.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from bids_mrisr.cli.run import main
from tests.conftest import make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1000,1400",
         "--virtual-time-budget=10000",  # screenshots wait for every image to load
         # ... and for every compositor stage to draw them: under load a screenshot was once
         # taken with the page's last raster tile still blank (white rows below the flip block)
         "--run-all-compositor-stages-before-draw"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                       "(apt-get install chromium) "),
]


def _chromium(page, profile, *action, flags=FLAGS):
    proc = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", *action,
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _screenshot(page, png, profile, flags=FLAGS):
    proc = _chromium(page, profile, f"--screenshot={png}", flags=flags)
    console = [line for line in proc.stderr.splitlines()
               if "CONSOLE" in line and ("Error" in line or "error" in line)]
    return console


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One phantom subject super-resolved (interp) and its group report: the output folder."""
    root = tmp_path_factory.mktemp("reports")
    bids = make_dataset(root / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    out = root / "out"
    assert main([str(bids), str(out), "participant", "-w", str(root / "w"), "--model",
                 "interp", "--skip-bids-validation"]) == 0
    assert main([str(bids), str(out), "group"]) == 0
    return out


def test_subject_and_group_reports_render_in_chromium(reports, tmp_path):
    import matplotlib.image as mpimg

    out = reports
    for page in (out / "sub-01.html", out / "group.html"):
        png = tmp_path / f"{page.stem}.png"
        assert _screenshot(page, png, tmp_path / f"profile-{page.stem}") == []
        pixels = mpimg.imread(str(png))
        assert pixels.std() > 0.02, f"{page.name} rendered blank"
        assert np.isfinite(pixels).all()


# Page-space boxes (CSS px) of the compared panels, written into the page once it has loaded
# (images included), for --dump-dom to read back.
PANELS = {"pair before": "#pair-0 .before img", "pair after": "#pair-0 .after img",
          "flip": "#flip-0", "frame before": "#flip-0 .frame .before",
          "frame after": "#flip-0 .frame .after"}
MEASURE = """<script>addEventListener("load", () => {
  const out = {};
  for (const [name, selector] of Object.entries(PANELS)) {
    const node = document.querySelector(selector), r = node.getBoundingClientRect();
    out[name] = {x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height,
                 shown: getComputedStyle(node).visibility === "visible" && r.width > 0,
                 loaded: node.complete !== false};
  }
  const pre = document.createElement("pre");
  pre.id = "geometry"; pre.textContent = JSON.stringify(out); document.body.append(pre);
});</script>""".replace("PANELS", json.dumps(PANELS))
TALL = [f for f in FLAGS if not f.startswith("--window-size")] + [
    "--window-size=1000,1800", "--force-device-scale-factor=1", "--hide-scrollbars"]


def _variant(page, name, *replacements):
    """A copy of the report beside it (same relative figure paths), edited, with MEASURE."""
    text = page.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    copy = page.with_name(f"{name}.html")
    copy.write_text(text.replace("</body>", MEASURE + "</body>"))
    return copy


def _geometry(page, profile):
    dom = _chromium(page, profile, "--dump-dom", "--virtual-time-budget=10000",
                    flags=TALL).stdout
    found = re.search(r'<pre id="geometry">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the measuring script did not run"
    boxes = json.loads(found.group(1).replace("&quot;", '"'))
    assert all(box["loaded"] for box in boxes.values()), boxes
    return boxes


def _pixels(box, image):
    """The screenshot's pixels (RGB, 0..1) inside a page box."""
    x, y, w, h = (round(box[k]) for k in ("x", "y", "w", "h"))
    return image[y: y + h, x: x + w, :3]


def test_before_and_after_stay_side_by_side_and_the_flip_never_moves(reports, tmp_path):
    import matplotlib.image as mpimg

    page = reports / "sub-01.html"
    flip_on = ('id="flip-0-before" class="show-before" checked', 'id="flip-0-before" '
               'class="show-before"'), ('class="show-after">', 'class="show-after" checked>')
    shown_before = _variant(page, "layout-before")
    shown_after = _variant(page, "layout-after", *flip_on)
    boxes = {}
    shots = {}
    for key, variant in (("before", shown_before), ("after", shown_after)):
        boxes[key] = _geometry(variant, tmp_path / f"dom-{key}")
        png = tmp_path / f"{key}.png"
        assert _screenshot(variant, png, tmp_path / f"shot-{key}", flags=TALL) == []
        shots[key] = mpimg.imread(str(png))

    geo = boxes["before"]
    left, right = geo["pair before"], geo["pair after"]
    assert left["shown"] and right["shown"]
    assert (left["w"], left["h"]) == (right["w"], right["h"])  # same size
    assert left["y"] == right["y"] and left["x"] + left["w"] <= right["x"]  # one row, in order
    assert left["w"] >= 400  # readable: half of the page, not thumbnails
    assert geo["frame before"]["shown"] and not geo["frame after"]["shown"]
    flipped = boxes["after"]
    assert flipped["frame after"]["shown"] and not flipped["frame before"]["shown"]
    for name in ("pair before", "pair after", "frame before", "frame after", "flip"):
        assert {k: flipped[name][k] for k in "xywh"} == {k: geo[name][k] for k in "xywh"}, name
    frame = geo["frame before"]
    assert {k: frame[k] for k in "xywh"} == {k: geo["frame after"][k] for k in "xywh"}

    image = shots["before"]
    assert frame["y"] + frame["h"] <= image.shape[0], "the window is too short for the frame"
    for name in ("pair before", "pair after", "frame before"):
        assert _pixels(geo[name], image).mean() < 0.35, f"{name}: no dark mosaic drawn there"
    gap = {"x": left["x"] + left["w"], "y": left["y"], "w": right["x"] - left["x"] - left["w"],
           "h": left["h"]}
    assert _pixels(gap, image).mean() > 0.9  # white page between the two panels
    # Flipping changes pixels in the flip block only (the switch and the frame): nothing jumps.
    changed = np.abs(shots["after"] - image).max(axis=-1) > 0.02
    rows, cols = np.nonzero(changed)
    block = geo["flip"]
    assert rows.size, "flipping changed nothing on the screen"
    assert rows.min() >= block["y"] - 1 and rows.max() <= block["y"] + block["h"] + 1
    assert cols.min() >= block["x"] - 1 and cols.max() <= block["x"] + block["w"] + 1
    in_frame = _pixels(frame, shots["after"]) - _pixels(frame, image)
    assert np.abs(in_frame).max() > 0.1  # the frame itself shows the other image


def test_print_shows_input_and_super_resolved_side_by_side(reports, tmp_path):
    from PIL import Image

    page = reports / "sub-01.html"
    printed = _variant(page, "layout-print", ("@media print{", "@media all{"))
    geo = _geometry(printed, tmp_path / "dom-print")
    left, right = geo["pair before"], geo["pair after"]
    assert left["shown"] and right["shown"] and (left["w"], left["h"]) == (right["w"], right["h"])
    assert left["y"] == right["y"] and left["x"] + left["w"] <= right["x"]
    assert geo["flip"]["w"] == 0  # the interactive flip is left out of print

    pdf = tmp_path / "report.pdf"
    _chromium(page, tmp_path / "pdf", "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    raw = pdf.read_bytes()
    embedded = []
    for m in re.finditer(rb"/Subtype /Image\s*/Width (\d+)\s*/Height (\d+).*?/Length (\d+)>>"
                         rb" stream\r?\n", raw, re.DOTALL):
        width, height, length = map(int, m.groups())
        data = zlib.decompress(raw[m.end(): m.end() + length])
        if len(data) == width * height * 3:
            embedded.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
    figures = reports / "sub-01" / "figures"
    for side in ("before", "after"):
        mosaic = np.asarray(Image.open(figures / f"sub-01_T1w_{side}.png").convert("RGB"))
        assert any(e.shape == mosaic.shape and np.array_equal(e, mosaic) for e in embedded), (
            f"the printout lacks the {side} mosaic")
