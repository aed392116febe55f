# bids_mrisr container image (see docs/containers.md).
#
#   docker build -t bids_mrisr:0.1.0 .
#   docker run --rm --gpus all --read-only --tmpfs /tmp \
#     -v /data/bids:/data:ro -v /data/out:/out -v /data/work:/work \
#     bids_mrisr:0.1.0 /data /out participant -w /work
#
# Base: the official Debian 12 (bookworm) Python 3.11 slim image, pinned by digest. The tag and
# digest are the ones Renovate pins in github.com/nalabelle/build, images/digests.Dockerfile
# ("docker.io/library/python:3.11.10-slim-bookworm@sha256:5148c0e4..."). With both a tag and a
# digest, Docker pulls by the digest. Any Debian-like image with python3 (>= 3.11), the venv
# module and useradd works: scripts/container-smoke.sh passes a debootstrap rootfs instead.
ARG BASE_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# The torch requirement. PyPI's torch==2.13.0 wheel for Linux x86_64 is the CUDA build; a local
# build may put another wheel (e.g. torch-2.13.0+cpu) into container-wheels/ and ask for it.
ARG TORCH_SPEC=torch==2.13.0
# 1: install only from the wheels in container-wheels/ (no package index; offline builds).
ARG WHEELHOUSE_ONLY=0
# 1: fetch TemplateFlow templates into TEMPLATEFLOW_HOME at build time (needs the network).
ARG TEMPLATEFLOW_PREFETCH=1
ARG TEMPLATEFLOW_VERSION=25.1.2

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow

SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src

RUN python3 -m venv /opt/venv

# Wheels first (rarely change), then the package (with its shipped student weights).
COPY container-wheels/ /src/container-wheels/
COPY pyproject.toml README.md /src/
COPY bids_mrisr/ /src/bids_mrisr/

RUN set -- --find-links /src/container-wheels; \
    if [ "$WHEELHOUSE_ONLY" = 1 ]; then set -- "$@" --no-index; fi; \
    /opt/venv/bin/python -m pip install "$@" "$TORCH_SPEC"; \
    /opt/venv/bin/python -m pip wheel "$@" --no-deps --wheel-dir /tmp/dist /src; \
    /opt/venv/bin/python -m pip install "$@" /tmp/dist/bids_mrisr-*.whl; \
    test -f /opt/venv/lib/python3*/site-packages/bids_mrisr/data/weights/student/model.json; \
    rm -rf /tmp/dist

RUN mkdir -p "$TEMPLATEFLOW_HOME"; \
    if [ "$TEMPLATEFLOW_PREFETCH" = 1 ]; then \
      /opt/venv/bin/python -m pip install "templateflow==${TEMPLATEFLOW_VERSION}"; \
      /opt/venv/bin/python -c "import templateflow.api as tf; \
[tf.get('MNI152NLin2009cAsym', resolution=1, suffix=s, desc=d, label=l) \
 for s, d, l in (('T1w', None, None), ('T2w', None, None), ('mask', 'brain', None), \
                 ('probseg', None, 'GM'), ('probseg', None, 'WM'))]"; \
    fi; \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="bids_mrisr" \
      org.opencontainers.image.description="BIDS-App: super-resolution of brain MRI (student U-Net, MoE diffusion teacher)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/containers.md" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/templateflow /opt/templateflow

# A fixed non-root user; `docker run -u UID:GID` with any other uid works as well, as nothing
# at run time writes outside /tmp and the bind-mounted output and work directories.
RUN groupadd --system --gid 10001 mrisr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/mrisr --no-create-home \
       --shell /usr/sbin/nologin mrisr

# Every cache the app's libraries touch goes under /tmp (a tmpfs with --read-only):
#   MPLCONFIGDIR     matplotlib font cache (report figures)
#   DENO_DIR         Deno's module/code cache (bids-validator-deno)
#   XDG_*            anything else following the XDG base directories
#   NIPYPE_*         nipype reads $NIPYPE_CONFIG_DIR/nipype.cfg; no version check over the network
#   TORCH_HOME, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, CUDA_CACHE_PATH: torch/CUDA JIT caches
# bids_mrisr/cli/cachedirs.py moves MPLCONFIGDIR and DENO_DIR to a private directory when
# these are not writable (a /tmp shared by several users under Apptainer).
# OMP_NUM_THREADS is deliberately NOT set: `--omp-nthreads N` sets it (and torch's threads).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/mrisr \
    MPLCONFIGDIR=/tmp/bids_mrisr-cache/matplotlib \
    DENO_DIR=/tmp/bids_mrisr-cache/deno \
    XDG_CACHE_HOME=/tmp/bids_mrisr-cache/xdg-cache \
    XDG_CONFIG_HOME=/tmp/bids_mrisr-cache/xdg-config \
    NIPYPE_CONFIG_DIR=/tmp/bids_mrisr-cache/nipype \
    NIPYPE_NO_ET=1 \
    TORCH_HOME=/tmp/bids_mrisr-cache/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/bids_mrisr-cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/bids_mrisr-cache/triton \
    CUDA_CACHE_PATH=/tmp/bids_mrisr-cache/nv \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0

# The default work directory is ./work: start in /tmp so a run without -w still works
# (pass -w on a bind mount to keep the work directory and resume).
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["bids_mrisr"]
CMD ["--help"]
