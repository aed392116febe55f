"""The README's quick-start commands are the ones CI runs and the CLI understands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)]


def test_readme_opens_with_install_demo_and_test_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    demo, tests = blocks[0], blocks[1]
    assert "pip install" in demo and "bids_mrisr demo" in demo
    assert "pip install" in tests and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def test_pyproject_pins_torch_and_declares_console_script():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in text
    assert 'bids_mrisr = "bids_mrisr.cli.run:main"' in text
