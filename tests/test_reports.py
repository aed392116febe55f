"""QC reports: every section present, every figure reference resolves, nothing from the web."""

from __future__ import annotations

import csv
import json
import re

from bids_mrisr.cli.run import main
from bids_mrisr.reports.html import robust_outliers
from tests.conftest import make_dataset


def test_subject_and_group_reports(tmp_path):
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-01/anat/sub-01_T2w.nii.gz": None})
    out = tmp_path / "out"
    common = [str(bids), str(out)]
    assert main([*common, "participant", "-w", str(tmp_path / "w"), "--model", "interp",
                 "--skip-bids-validation"]) == 0
    page = (out / "sub-01.html").read_text()
    for section in ('id="run-0"', 'id="run-1"', "Input and super-resolved",
                    "Difference (SR - cubic)", "Detail", "No-reference quality", "Provenance",
                    'id="methods"', "N4ITK", "Nipype", "PyBIDS"):
        assert section in page, section
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert len(refs) >= 8
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "//")), ref  # offline
        assert (out / ref).is_file(), ref
    assert "<script" not in page  # readable without JavaScript (the toggle is CSS)

    assert main([*common, "group"]) == 0
    rows = list(csv.DictReader((out / "group_summary.tsv").open(), delimiter="\t"))
    assert len(rows) == 2 and all(float(r["sharpness_gain"]) > 0 for r in rows)
    group = (out / "group.html").read_text()
    assert 'href="sub-01.html"' in group and group.count("<tr>") == 3


def test_robust_outliers_flag_only_the_odd_one():
    assert robust_outliers([1.0, 1.1, 0.9, 1.05, 5.0]) == [False] * 4 + [True]
    assert robust_outliers([1.0, 2.0]) == [False, False]  # too few runs to judge


def test_reports_only_rebuilds_from_existing_outputs(tmp_path):
    import shutil

    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--model", "interp",
            "--skip-bids-validation"]
    assert main(args) == 0
    (out / "sub-01.html").unlink()
    shutil.rmtree(out / "sub-01" / "figures")
    shutil.rmtree(tmp_path / "w")
    assert main([*args, "--reports-only"]) == 0
    assert (out / "sub-01.html").is_file() and any((out / "sub-01" / "figures").glob("*.png"))
    assert not (tmp_path / "w").exists()  # nothing was recomputed


def test_teacher_report_shows_gating_maps(tmp_path):
    from bids_mrisr.sr.checkpoint import random_checkpoint
    from bids_mrisr.sr.networks.config import ModelConfig

    random_checkpoint(tmp_path / "teacher", ModelConfig.tiny_teacher())
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--model",
                 "teacher", "--weights", str(tmp_path / "teacher"),
                 "--skip-bids-validation"]) == 0
    page = (out / "sub-01.html").read_text()
    assert "Gating maps" in page and page.count('alt="gate ') == 3
    assert "mean gate in head" in page
    assert "Mean gate per tissue class" in page and "bundled MNI152 (2009) GM/WM" in page
    assert "[mni152]" in page  # the template is cited in the methods
    qc = json.loads(next((out / "sub-01" / "figures").glob("*_qc.json")).read_text())
    table = qc["gate_by_tissue"]["experts"]
    assert len(table) == 3
    for values in table.values():
        assert set(values) == {"GM", "WM", "rest of head"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    # the three experts' gates sum to one everywhere, so per tissue their means do too
    for tissue in ("GM", "WM", "rest of head"):
        assert abs(sum(v[tissue] for v in table.values()) - 1.0) < 1e-3


def test_gate_means_by_tissue_show_an_expert_that_specialises():
    import numpy as np

    from bids_mrisr.reports.tissue import gate_means_by_tissue

    gm = np.zeros((10, 10, 10))
    gm[:5] = 1.0
    wm = 1.0 - gm
    gates = np.stack([gm, wm], axis=-1)  # expert "a" takes GM, "b" takes WM
    table = gate_means_by_tissue(gates, np.ones_like(gm), gm, wm, ["a", "b"])
    assert table["a"]["GM"] == 1.0 and table["a"]["WM"] == 0.0
    assert table["b"]["WM"] == 1.0 and table["b"]["GM"] == 0.0


def test_a_failing_figure_costs_a_warning_not_the_run(tmp_path, monkeypatch, capsys):
    import bids_mrisr.reports.html as report_html

    def broken(*_args, **_kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(report_html, "build_run_figures", broken)
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--model",
                 "interp", "--skip-bids-validation"]) == 0
    assert "report figures failed (RuntimeError: no display)" in capsys.readouterr().err
    assert "figures failed" in (out / "sub-01.html").read_text()


def test_demo_reference_section_goes_before_the_methods_once(tmp_path):
    import numpy as np

    from bids_mrisr.reports.figures import side_by_side_crops
    from bids_mrisr.reports.html import add_reference_section

    report = tmp_path / "sub-demo01.html"
    report.write_text('<html><body><section id="run-0"></section>'
                      '<section id="methods">m</section></body></html>')
    volume = np.random.default_rng(0).random((20, 30, 40)).astype(np.float32)
    crops = side_by_side_crops([volume, volume, volume], ["reference", "cubic", "sr"], 2,
                               tmp_path / "sub-demo01" / "figures" / "demo_reference.png",
                               (0.0, 1.0))
    scores = {"cubic": {"psnr": 25.13, "ssim": 0.9278}, "sr": {"psnr": 26.09, "ssim": 0.9601}}
    for _ in range(2):  # a rerun replaces the section, never stacks a second one
        add_reference_section(report, scores, crops, "student", "mni152_1mm.nii.gz")
    page = report.read_text()
    assert page.count('<section id="reference">') == 1
    assert page.index('id="reference"') < page.index('id="methods"')
    assert "25.13 dB" in page and "26.09 dB" in page and "0.9601" in page
    assert 'src="sub-demo01/figures/demo_reference.png"' in page
    assert (tmp_path / "sub-demo01/figures/demo_reference.png").is_file()


def test_tissue_priors_come_from_templateflow_when_it_holds_them(tmp_path, monkeypatch):
    import nibabel as nib
    import numpy as np

    from bids_mrisr.reports.tissue import TEMPLATEFLOW_TEMPLATE, load_priors

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    assert "nilearn" in load_priors().source  # an empty TemplateFlow home: the bundled maps
    folder = tmp_path / f"tpl-{TEMPLATEFLOW_TEMPLATE}"
    folder.mkdir()
    stem = f"tpl-{TEMPLATEFLOW_TEMPLATE}_res-01"
    for name in ("T1w", "label-GM_probseg", "label-WM_probseg"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
                 str(folder / f"{stem}_{name}.nii.gz"))
    priors = load_priors()
    assert priors.source.startswith(f"TemplateFlow {TEMPLATEFLOW_TEMPLATE}")
    assert priors.gm.shape == (4, 4, 4)


def test_provenance_shows_what_the_network_was_told_and_the_consistency_step():
    from bids_mrisr.reports.html import _provenance_rows

    rows = _provenance_rows({
        "Model": "student",
        "AcquisitionInput": [{"Axis": 2, "SliceProfile": "box (from MRAcquisitionType 2D)"}],
        "InputConsistency": {"KeptFraction": 0.64, "ResidualRMSAfter": 0.004}})
    assert "<th>AcquisitionInput</th>" in rows and "MRAcquisitionType 2D" in rows
    assert "<th>InputConsistency</th>" in rows and "KeptFraction" in rows
