"""Real-browser check of the reports: headless Chromium renders them, not blank, no errors.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped with that reason where it is
absent. Run alone with ``python -m pytest -m browser tests/test_reports_browser.py``.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from bids_mrisr.cli.run import main
from tests.conftest import make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1000,1400"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                       "(apt-get install chromium) "),
]


def _screenshot(page, png, profile):
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                           f"--screenshot={png}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines()
               if "CONSOLE" in line and ("Error" in line or "error" in line)]
    return console


def test_subject_and_group_reports_render_in_chromium(tmp_path):
    import matplotlib.image as mpimg

    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--model",
                 "interp", "--skip-bids-validation"]) == 0
    assert main([str(bids), str(out), "group"]) == 0
    for page in (out / "sub-01.html", out / "group.html"):
        png = tmp_path / f"{page.stem}.png"
        assert _screenshot(page, png, tmp_path / f"profile-{page.stem}") == []
        pixels = mpimg.imread(str(png))
        assert pixels.std() > 0.02, f"{page.name} rendered blank"
        assert np.isfinite(pixels).all()
