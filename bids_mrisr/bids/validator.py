"""Run the BIDS validator (PyPI ``bids-validator-deno``, offline) and collect its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

VALIDATOR = "bids-validator-deno"


@dataclass(frozen=True)
class ValidationIssue:
    severity: str
    code: str
    location: str
    detail: str = ""

    def one_line(self) -> str:
        where = f" at {self.location}" if self.location else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.code}{where}{detail}"


class ValidatorUnavailableError(RuntimeError):
    pass


def validator_executable() -> str:
    """The validator next to this Python (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / VALIDATOR
    if beside.is_file():
        return str(beside)
    found = shutil.which(VALIDATOR)
    if found:
        return found
    raise ValidatorUnavailableError(
        f"{VALIDATOR} is not installed; install it with 'pip install bids-validator-deno' "
        "or pass --skip-bids-validation"
    )


def _validator_environment() -> dict[str, str]:
    """Deno reads ``$HOME/.npmrc`` and fails when HOME cannot be a folder (under a file, say);
    a HOME that does not exist is what containers with an arbitrary uid give. Point it at the
    temp dir then. NO_COLOR keeps ANSI escapes out of the one-line errors."""
    env = {**os.environ, "NO_COLOR": "1"}
    home = Path(env.get("HOME", ""))
    if not home.is_dir():
        env["HOME"] = tempfile.gettempdir()
    return env


def validate_dataset(dataset: Path, timeout: float = 900.0) -> list[ValidationIssue]:
    """Return every issue the validator reports (errors and warnings)."""
    command = [validator_executable(), str(dataset), "--format", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, env=_validator_environment())
    except subprocess.TimeoutExpired as err:
        raise ValidatorUnavailableError(f"{VALIDATOR} did not finish in {timeout:.0f} s") from err
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        raise ValidatorUnavailableError(
            f"{VALIDATOR} gave no JSON report: {first[0] if first else 'no output'}") from err
    issues = report.get("issues", {}).get("issues", [])
    return [
        ValidationIssue(
            severity=str(item.get("severity", "")),
            code=str(item.get("code", "")),
            location=str(item.get("location", "") or ""),
            detail=str(item.get("subCode", "") or item.get("issueMessage", "") or ""),
        )
        for item in issues
    ]


def validation_errors(dataset: Path) -> list[ValidationIssue]:
    return [issue for issue in validate_dataset(dataset) if issue.severity == "error"]
