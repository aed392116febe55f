"""``bids_mrisr slurm``: the job-array scripts it writes, run as SLURM would run one task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bids_mrisr.cli.run import main
from bids_mrisr.hpc.slurm import ArrayJob, render_array_script, render_group_script
from tests.conftest import make_dataset


def _bash_syntax_ok(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text(text)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_array_script_lists_participants_and_resources(tmp_path):
    job = ArrayJob(bids_dir=Path("/data/my study"), output_dir=Path("/scratch/out"),
                   participants=("01", "02", "03"), runtime="apptainer",
                   prefix=Path("/images/bids_mrisr.sif"), cpus=8, mem_gb=32, gpus=1,
                   partition="gpu", account="lab", max_parallel=2,
                   log_dir=Path("/home/me/logs"), app_args=("--model", "student"))
    text = render_array_script(job)
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --cpus-per-task=8" in text and "#SBATCH --mem=32768M" in text
    assert "#SBATCH --gres=gpu:1" in text and "#SBATCH --partition=gpu" in text
    assert "#SBATCH --account=lab" in text
    assert "#SBATCH --output=/home/me/logs/%x_%A_%a.log" in text
    assert "PARTICIPANTS=(01 02 03)" in text
    assert "BIDS_DIR='/data/my study'" in text  # quoted: the space survives
    assert "apptainer run --cleanenv --nv" in text
    assert '-B "$BIDS_DIR":/data:ro' in text and '-B "$OUT_DIR":/out' in text
    assert "/images/bids_mrisr.sif /data /out participant" in text
    assert "--mem 27.2G" in text  # 85 % of the allocation: headroom below SLURM's limit
    assert text.rstrip().endswith("--model student")
    _bash_syntax_ok(text, tmp_path)
    group = render_group_script(job)
    assert "#SBATCH --array" not in group and " group -w /work" in group
    assert "--gres" not in group and "--nv" not in group  # the group level needs no GPU
    _bash_syntax_ok(group, tmp_path)


def test_array_job_refuses_nonsense():
    with pytest.raises(ValueError, match="at least one participant"):
        ArrayJob(bids_dir=Path("/d"), output_dir=Path("/o"), participants=())
    with pytest.raises(ValueError, match="needs the image"):
        ArrayJob(bids_dir=Path("/d"), output_dir=Path("/o"), participants=("01",),
                 runtime="apptainer")


def _two_subjects(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-02/anat/sub-02_T1w.nii.gz": None})


def test_generated_array_runs_one_participant_per_task_then_the_group(tmp_path, capsys):
    root = _two_subjects(tmp_path)
    out, scripts = tmp_path / "derivatives", tmp_path / "jobs"
    code = main(["slurm", str(root), str(out), "--script-dir", str(scripts),
                 "--venv", sys.prefix, "--cpus", "1", "--mem", "2G", "--work-root",
                 str(tmp_path / "scratch"), "--", "--model", "interp"])
    assert code == 0
    submit = capsys.readouterr().out
    assert "sbatch --parsable" in submit and "--dependency=afterany:" in submit
    array = scripts / "bids_mrisr_array.sbatch"
    assert (scripts / "logs").is_dir()  # SLURM does not create the --output folder itself
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"}
    run = subprocess.run(["bash", str(array)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert list((out / "sub-02" / "anat").glob("sub-02_*desc-sr_T1w.nii.gz"))
    assert not (out / "sub-01").exists()  # task 1 is the second participant only
    assert (tmp_path / "scratch" / "bids_mrisr_work" / "sub-02").is_dir()
    group = subprocess.run(["bash", str(scripts / "bids_mrisr_group.sbatch")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert group.returncode == 0, group.stdout + group.stderr
    assert (out / "group.html").is_file()
    beyond = subprocess.run(["bash", str(array)], env={**env, "SLURM_ARRAY_TASK_ID": "2"},
                            capture_output=True, text=True, timeout=60)
    assert beyond.returncode == 64 and "only 2 participants" in beyond.stderr


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--", "--participant-label", "01"], 64, "set per task by the script"),
    (["--", "--model", "banana"], 64, "usage error"),
    (["--image", "missing.sif"], 66, "no such file"),
    (["--participant-label", "99"], 18, ""),
])
def test_slurm_refuses_bad_requests_before_writing(tmp_path, capsys, extra, code, message):
    root = _two_subjects(tmp_path)
    scripts = tmp_path / "jobs"
    argv = ["slurm", str(root), str(tmp_path / "out"), "--script-dir", str(scripts),
            *extra]
    assert main(argv) == code
    assert message in capsys.readouterr().err
    assert not scripts.exists()


def test_slurm_output_inside_dataset_is_refused(tmp_path):
    root = _two_subjects(tmp_path)
    assert main(["slurm", str(root), str(root / "derivatives" / "x"),
                 "--script-dir", str(tmp_path / "jobs")]) == 64


@pytest.mark.slurm
def test_generated_array_on_a_real_one_node_slurm(tmp_path):
    """Debian's slurm-wlm on localhost (scripts/slurm-localhost.sh): sbatch the array of two
    participants and the group job chained after it, as a cluster user would."""
    import shutil
    import time

    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("slurm-wlm is not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd on localhost needs root")
    script = Path(__file__).parent.parent / "scripts" / "slurm-localhost.sh"
    state = tmp_path / "slurm"
    started = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"could not start a local SLURM: {started.stderr.strip()[-300:]}")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    try:
        root = _two_subjects(tmp_path)
        out, scripts = tmp_path / "derivatives", tmp_path / "jobs"
        written = subprocess.run(
            [sys.executable, "-m", "bids_mrisr.cli.run", "slurm", str(root), str(out),
             "--script-dir", str(scripts), "--venv", sys.prefix, "--cpus", "1", "--mem", "2G",
             "--time", "00:10:00", "--work-root", str(tmp_path / "scratch"), "--",
             "--model", "interp", "--skip-bids-validation"],
            env=env, capture_output=True, text=True, timeout=120)
        assert written.returncode == 0, written.stderr
        submit = subprocess.run(["bash", "-c", written.stdout.strip()], env=env,
                                capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0, submit.stderr
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if queue.returncode == 0 and not queue.stdout.strip():
                break
            time.sleep(2)
        logs = sorted((scripts / "logs").glob("*.log"))
        assert len(logs) == 3, logs  # two array tasks and the group job
        for label in ("01", "02"):
            assert (out / f"sub-{label}/anat/sub-{label}_res-1mm_desc-sr_T1w.nii.gz").is_file(), \
                "\n".join(log.read_text()[-500:] for log in logs)
        rows = (out / "group_summary.tsv").read_text().strip().splitlines()
        assert len(rows) == 3  # the group job ran after both tasks: header + 2 runs
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], timeout=60)
