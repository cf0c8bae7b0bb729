# syntax=docker/dockerfile:1
# torchferry's container image: CPU PyTorch, a non-root user, a read-only root filesystem
# with the model store on a volume at /mnt/models (where KServe mounts a model).
# Build and run: docs/container.md. The install steps are docker/install.sh, which
# tests/docker/test_image_install.py also runs, since no image is built in CI.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the virtual environment at /opt/torchferry ------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# docker/install.sh reads these (a build ARG is in the environment of RUN)
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=jpeg
COPY . /src
# pip's cache is a build cache mount: it speeds up rebuilds and is never in a layer
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3 sh /src/docker/install.sh /opt/torchferry /src

# -- runtime: the same Python, the venv, nothing else -------------------------------------
FROM ${PYTHON_IMAGE}
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it, and a volume's owner
# can be set to it. The store's directory is its own: a named volume mounted there starts
# with this owner, so the server can write the store's .torchferry/ (state, keys).
RUN groupadd --system --gid 10001 torchferry \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin torchferry \
    && mkdir -p /mnt/models \
    && chown 10001:10001 /mnt/models
COPY --from=builder /opt/torchferry /opt/torchferry

# The root filesystem may be read-only: bytecode was compiled at build time; every
# temporary file (the workers' metric files, TLS key copies) goes under TMPDIR, a tmpfs;
# HOME points there too, for any library that caches under ~.
# The ports fit KServe (HTTP 8080, gRPC 8081), so management moves from 8081 to 8085.
ENV PATH=/opt/torchferry/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    TORCHFERRY_STORE=/mnt/models \
    TORCHFERRY_HOST=0.0.0.0 \
    TORCHFERRY_HTTP_PORT=8080 \
    TORCHFERRY_GRPC_PORT=8081 \
    TORCHFERRY_MANAGEMENT_PORT=8085 \
    TORCHFERRY_METRICS_PORT=8082
# HTTP, gRPC, management (on loopback unless --management-host), metrics
EXPOSE 8080 8081 8085 8082
# No VOLUME: an image built FROM this one may COPY a store into /mnt/models, which a
# VOLUME would discard; mount one at run time (docker run -v, compose, KServe).
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
    CMD ["torchferry-healthcheck"]
# `torchferry serve` with the TORCHFERRY_* settings above, then the container's arguments;
# any other command (torchferry token ..., torchferry --version) runs as given
ENTRYPOINT ["torchferry-entrypoint"]
CMD []
