#!/usr/bin/env bash
# One sitting of the student training campaign (docs/training.md, "The campaign").
#
# The campaign trains the candidate default student (base width 32, about 0.45 M parameters,
# told the acquisition) on a single 150,000-step schedule spread over many CPU sittings. Each
# sitting resumes exactly where the last one stopped (weights, optimiser, EMA, step, schedule and
# crop sampler from out/student/train_state.pt, the one file committed while the schedule runs;
# a finished schedule drops it, and its final weights, out/student/model.*, are committed instead),
# runs for MINUTES (default 60), then saves the state and a snapshot of the weights
# (out/student/model.*) for benchmarks/quality.py. Ctrl-C or SIGTERM also save the state.
#
# A second campaign trained base width 48 (about 0.99 M parameters) on a 50,000-step schedule:
# WIDTH=48 STEPS=50000 OUT=out-width48 THREADS=1 scripts/campaign/run.sh MINUTES; it finished
# (final weights in out-width48/student/model.*) and did not beat width 32 (docs/training.md).
#
# Volumes: training bc01 peds01 stroke01 (T1w, T2w) uih01 uih02 of ds-real plus the bundled
# MNI152 and pydeface mean head; colin27 is the trainer's validation helper. forrest01 and adi01
# are the test set and never enter training; colin27, seg3d01 and philips01 choose the model.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${BIDS_MRISR_TEST_DATA:-../../../shared/data/ds-real}
MINUTES=${1:-60}
# WIDTH, STEPS, SEED and OUT pick the campaign: the defaults are the finished width-32 one (out/);
# the finished width-48 one ran with WIDTH=48 STEPS=50000 OUT=out-width48, and the width-32
# replicates with other seeds run with SEED=1 OUT=out-seed1 and SEED=2 OUT=out-seed2
# (docs/training.md). STOP_AT=N also ends the sitting at step N, with a snapshot of that step
# (a replicate scored at the step the shipped weights were taken: STOP_AT=101475).
# RECIPE=FILE adds --recipe-file FILE: the four-level campaign (twice the context, an expert
# that differs in kind from the three seeds) runs with RECIPE=levels4.toml OUT=out-levels4.
STOP=()
if [ -n "${STOP_AT:-}" ]; then STOP=(--stop-at-step "$STOP_AT"); fi
if [ -n "${RECIPE:-}" ]; then STOP+=(--recipe-file "$RECIPE"); fi
exec "${PYTHON:-../../.venv/bin/python}" -m bids_mrisr.cli.run train "$DATA" "${OUT:-out}" \
    --participant-label bc01 peds01 stroke01 uih01 uih02 --validation-label colin27 \
    --batch-size 16 --student-steps "${STEPS:-150000}" --threads "${THREADS:-2}" \
    --acquisition-input --base-width "${WIDTH:-32}" --seed "${SEED:-0}" \
    --stop-after "$MINUTES" --resume ${STOP[@]+"${STOP[@]}"}
