#!/usr/bin/env bash
# Container smoke test for bids_mrisr, without any image registry (docs/containers.md).
#
#  1. starts dockerd (Debian docker.io) in the background if no Docker engine answers;
#  2. makes a base image locally: a minimal Debian bookworm rootfs (debootstrap) with python3.11,
#     python3-venv and pip, loaded with `docker import`;
#  3. fills container-wheels/ (gitignored) with the CPU torch wheel and, when a container cannot
#     reach PyPI, with wheels of every dependency built on the host;
#  4. builds the image with --build-arg BASE_IMAGE=<that base> and no TemplateFlow prefetch;
#  5. runs `bids_mrisr --version` and `bids_mrisr demo` with --read-only, a tmpfs /tmp, a non-root
#     uid, an unwritable HOME and the output bind-mounted; checks the outputs;
#  6. prints one PASS/FAIL line per check and exits non-zero if any failed.
#
# Needs root (debootstrap, dockerd) and the Debian mirror. Environment knobs:
#   TORCH_WHEEL   CPU torch wheel (default /opt/wheels/torch-2.13.0+cpu-cp311-...whl)
#   SMOKE_DIR     scratch dir for rootfs, logs and demo output (default /tmp/bids_mrisr-smoke)
#   BASE_TAG      local base image (default bids_mrisr-base:local); FRESH_BASE=1 rebuilds it
#   IMAGE_TAG     image under test (default bids_mrisr:smoke)
#   MIRROR        Debian mirror (default http://deb.debian.org/debian)
#   PIP_ONLINE    skip the probe: 1 = containers reach PyPI, 0 = build from host wheels
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
SMOKE_DIR=${SMOKE_DIR:-/tmp/bids_mrisr-smoke}
BASE_TAG=${BASE_TAG:-bids_mrisr-base:local}
IMAGE_TAG=${IMAGE_TAG:-bids_mrisr:smoke}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
RUN_UID=12345
WHEELS=$REPO/container-wheels
HOST_PY=$REPO/.venv/bin/python
[ -x "$HOST_PY" ] || HOST_PY=python3

mkdir -p "$SMOKE_DIR"
RESULTS=()
FAILED=0
T0=$SECONDS

log() { printf '[smoke %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
result() {  # result PASS|FAIL name detail
    RESULTS+=("$1  $2${3:+  ($3)}")
    [ "$1" = PASS ] || FAILED=1
    log "$1 $2${3:+ ($3)}"
}
summary() {
    echo
    echo "==== bids_mrisr container smoke test: summary ===="
    printf '%s\n' "${RESULTS[@]}"
    echo "total time: $((SECONDS - T0)) s"
    if [ "$FAILED" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
}
die() { result FAIL "$1" "$2"; summary; exit 1; }
timed() {  # timed NAME cmd...: run, record the seconds in TIMES[NAME]
    local start=$SECONDS
    "${@:2}"
    local rc=$?
    TIMES+=("$1: $((SECONDS - start)) s")
    return $rc
}
TIMES=()

# 1. Docker engine ---------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "docker engine" "no engine answers and no dockerd (apt-get install docker.io)"
    log "no Docker engine answers: starting dockerd (log: $SMOKE_DIR/dockerd.log)"
    nohup dockerd >"$SMOKE_DIR/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || die "docker engine" "dockerd did not come up, see $SMOKE_DIR/dockerd.log"
result PASS "docker engine" "server $(docker version -f '{{.Server.Version}}' 2>/dev/null)"

# 2. Local base image ------------------------------------------------------------------------
make_base() {
    local rootfs=$SMOKE_DIR/rootfs
    command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; return 1; }
    rm -rf "$rootfs"
    log "debootstrap bookworm (minbase + python3.11, python3-venv, pip) from $MIRROR"
    debootstrap --variant=minbase --include=python3.11,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >"$SMOKE_DIR/debootstrap.log" 2>&1 || return 1
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
}
if [ "${FRESH_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    timed "base image (debootstrap + import)" make_base || die "base image" "debootstrap/import failed, see $SMOKE_DIR/debootstrap.log"
else
    log "reusing $BASE_TAG (FRESH_BASE=1 rebuilds it)"
fi
result PASS "base image" "$BASE_TAG: $(docker run --rm "$BASE_TAG" python3 --version 2>&1)"

# 3. Wheels in the build context ---------------------------------------------------------------
[ -f "$TORCH_WHEEL" ] || die "torch wheel" "$TORCH_WHEEL not found"
mkdir -p "$WHEELS"
cp -u "$TORCH_WHEEL" "$WHEELS/"
if [ -z "${PIP_ONLINE:-}" ]; then
    log "probe: can a container reach PyPI?"
    if timeout 90 docker run --rm "$BASE_TAG" python3 -m pip download --no-deps --quiet \
            --disable-pip-version-check --timeout 20 --retries 0 -d /tmp/probe six \
            >"$SMOKE_DIR/pypi-probe.log" 2>&1; then
        PIP_ONLINE=1
    else
        PIP_ONLINE=0
    fi
fi
log "containers reach PyPI: $([ "$PIP_ONLINE" = 1 ] && echo yes || echo "no (see $SMOKE_DIR/pypi-probe.log)")"
WHEELHOUSE_ONLY=0
if [ "$PIP_ONLINE" != 1 ]; then
    WHEELHOUSE_ONLY=1
    log "building wheels of every dependency on the host into container-wheels/"
    host_wheels() {
        "$HOST_PY" -m pip wheel --quiet --wheel-dir "$WHEELS" --find-links "$WHEELS" \
            "torch==2.13.0+cpu" "$REPO" "setuptools>=64" wheel
    }
    timed "host wheels" host_wheels >"$SMOKE_DIR/host-wheels.log" 2>&1 \
        || die "host wheels" "pip wheel failed, see $SMOKE_DIR/host-wheels.log"
    rm -f "$WHEELS"/bids_mrisr-*.whl  # the image builds its own wheel from the context
fi
result PASS "wheels" "$(find "$WHEELS" -name '*.whl' | wc -l) wheel(s), $(du -sh "$WHEELS" | cut -f1), WHEELHOUSE_ONLY=$WHEELHOUSE_ONLY"

# 4. Build ---------------------------------------------------------------------------------------
log "docker build -t $IMAGE_TAG (log: $SMOKE_DIR/build.log)"
build() {
    docker build -t "$IMAGE_TAG" \
        --build-arg BASE_IMAGE="$BASE_TAG" \
        --build-arg TORCH_SPEC="torch==2.13.0+cpu" \
        --build-arg WHEELHOUSE_ONLY="$WHEELHOUSE_ONLY" \
        --build-arg TEMPLATEFLOW_PREFETCH=0 \
        --build-arg REVISION="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$REPO"
}
timed "docker build" build >"$SMOKE_DIR/build.log" 2>&1 \
    || die "docker build" "see $SMOKE_DIR/build.log: $(tail -3 "$SMOKE_DIR/build.log" | tr '\n' ' ')"
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE_TAG")
result PASS "docker build" "$IMAGE_TAG, $((SIZE / 1000000)) MB"

USER_CFG=$(docker image inspect -f '{{.Config.User}}' "$IMAGE_TAG")
case "$USER_CFG" in
    "" | 0 | 0:* | root | root:*) result FAIL "non-root USER" "User='$USER_CFG'" ;;
    *) result PASS "non-root USER" "$USER_CFG" ;;
esac
LABEL=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$IMAGE_TAG")
[ "$LABEL" = bids_mrisr ] && result PASS "OCI labels" "title=$LABEL" || result FAIL "OCI labels" "title='$LABEL'"

# 5. Runs: read-only root, tmpfs /tmp, non-root uid, HOME unwritable ---------------------------
RO=(--rm --read-only --tmpfs /tmp:rw,nosuid,nodev,mode=1777 --user "$RUN_UID:$RUN_UID" --network none)

if docker run "${RO[@]}" --entrypoint /bin/sh "$IMAGE_TAG" -c 'touch "$HOME/probe"' 2>/dev/null; then
    result FAIL "HOME unwritable" "could write into \$HOME"
else
    result PASS "HOME unwritable" "$(docker run "${RO[@]}" --entrypoint /bin/sh "$IMAGE_TAG" -c 'echo "HOME=$HOME"')"
fi

start=$SECONDS
VERSION_OUT=$(docker run "${RO[@]}" "$IMAGE_TAG" --version 2>&1)
VERSION_RC=$?
TIMES+=("--version: $((SECONDS - start)) s")
if [ "$VERSION_RC" = 0 ] && [ -n "$VERSION_OUT" ]; then
    result PASS "--version (read-only)" "$VERSION_OUT"
else
    result FAIL "--version (read-only)" "$VERSION_OUT"
fi

OUT=$SMOKE_DIR/demo-out
rm -rf "$OUT" && mkdir -p "$OUT" && chown "$RUN_UID:$RUN_UID" "$OUT"
log "demo: docker run ${RO[*]} -v $OUT:/out $IMAGE_TAG demo /out --omp-nthreads 1"
timed "demo" docker run "${RO[@]}" -v "$OUT:/out" "$IMAGE_TAG" demo /out --omp-nthreads 1 \
    >"$SMOKE_DIR/demo.log" 2>&1
DEMO_RC=$?
grep -E 'PSNR|RESULT|error' "$SMOKE_DIR/demo.log" | sed 's/^/    /'
SR=$(find "$OUT/derivatives" -name '*desc-sr_T1w.nii.gz' 2>/dev/null | head -1)
if [ "$DEMO_RC" = 0 ] && [ -n "$SR" ] && [ -f "$OUT/derivatives/group.html" ] \
        && grep -q 'bids_mrisr --model student *PSNR' "$SMOKE_DIR/demo.log"; then
    result PASS "demo (read-only, uid $RUN_UID, no network)" "exit 0, ${SR#"$OUT"/}"
else
    result FAIL "demo (read-only, uid $RUN_UID, no network)" "exit $DEMO_RC, see $SMOKE_DIR/demo.log"
fi
if grep -qiE 'read-only file system|permission denied' "$SMOKE_DIR/demo.log"; then
    result FAIL "no write errors in the demo log" "$(grep -m1 -iE 'read-only file system|permission denied' "$SMOKE_DIR/demo.log")"
else
    result PASS "no write errors in the demo log"
fi

printf '%s\n' "timings:" "${TIMES[@]/#/  }"
summary
exit "$FAILED"
