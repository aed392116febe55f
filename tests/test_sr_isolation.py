"""``sr/`` must not import nipype, pybids or the config: it is usable as a plain library."""

from __future__ import annotations

import ast
from pathlib import Path

import bids_mrisr

FORBIDDEN = ("nipype", "bids", "bids_mrisr.config", "bids_mrisr.cli", "bids_mrisr.workflows",
             "bids_mrisr.interfaces")
SR_DIR = Path(bids_mrisr.__file__).parent / "sr"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_sr_imports_nothing_forbidden():
    files = sorted(SR_DIR.rglob("*.py"))
    assert len(files) > 5
    offenders = [
        f"{path.relative_to(SR_DIR)}: {name}"
        for path in files for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    ]
    assert offenders == []


def test_checker_catches_a_forbidden_import(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import nipype.pipeline\nfrom bids import BIDSLayout\n")
    assert _imports(sample) == ["nipype.pipeline", "bids"]
