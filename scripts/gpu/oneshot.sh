#!/usr/bin/env bash
# One GPU call (docs/training.md, "One GPU call"): train the MoE mean teacher, distil the
# width-32 student, and write OUT/teacher, OUT/student, OUT/summary.json and OUT/oneshot.log,
# each checkpoint as soon as its phase ends. For the `run` tool, from the repository root:
#
#     command: bash scripts/gpu/oneshot.sh      carry: ["scripts/gpu/volumes.npz"]
#
# volumes.npz comes from `.venv/bin/python scripts/gpu/pack.py` (git-ignored: licensed data).
# Budgets (minutes, environment): TEACHER_MIN=4 DISTILL_MIN=3 PLAIN_MIN=0 (PLAIN_MIN > 0 also
# trains the same student without a teacher into OUT/student_plain; with TEACHER_MIN=0
# DISTILL_MIN=0 PLAIN_MIN=3 a second call trains only that baseline). About 1 min of loading,
# worker start-up and validation comes on top; the hard stop leaves the call inside 10 min.
# Further arguments go to the trainer (python -m bids_mrisr.sr.training.oneshot --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder whose contents come back}"
VOLUMES=${VOLUMES:-scripts/gpu/volumes.npz}
if [[ ! -f $VOLUMES ]]; then
    echo "$VOLUMES is missing: run scripts/gpu/pack.py and carry it" >&2
    exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
PYTHONPATH=. timeout --signal=TERM --kill-after=15 "${STOP_AFTER_S:-570}" \
    "${PYTHON:-python3}" -u -m bids_mrisr.sr.training.oneshot --volumes "$VOLUMES" \
    --out "$OUT" --teacher-minutes "${TEACHER_MIN:-4}" --distill-minutes "${DISTILL_MIN:-3}" \
    --plain-minutes "${PLAIN_MIN:-0}" --device "${DEVICE:-auto}" "$@" 2>&1 \
    | tee "$OUT/oneshot.log"
