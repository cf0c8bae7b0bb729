#!/bin/sh
# The container image's install steps, in one script: the Dockerfile's builder stage runs it,
# and tests/docker/test_image_install.py runs it into a fresh virtual environment, so that
# what the image holds is tested on machines that cannot build images.
#
# usage: docker/install.sh VENV SOURCE
#   VENV    the virtual environment to make (the image's: /opt/torchferry)
#   SOURCE  the project to install: its source tree, or a wheel built from it
# environment:
#   PYTHON           the interpreter that makes the venv (default: python3)
#   TORCH            the torch requirement (default: torch==2.13.0, the version we test)
#   TORCH_INDEX_URL  where torch comes from (default: the PyTorch CPU index, so no CUDA
#                    wheels; empty: pip's configured index, as for every other package)
#   EXTRAS           the project's extras, comma separated (default: none; e.g. "otel")
#   BYTECODE         what to compile: "all" (default: every package, as the image needs)
#                    or "no-torch" (all but torch and sympy, which a server of ONNX models
#                    never imports: for the image's test, on 2 CI cores where they cost
#                    most of a CPU-minute)
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VENV SOURCE" >&2
    exit 2
fi
venv=$1
source=$2
here=$(cd "$(dirname "$0")" && pwd)
: "${PYTHON:=python3}"
: "${TORCH:=torch==2.13.0}"
: "${TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu}"
: "${EXTRAS:=}"
: "${BYTECODE:=all}"

"$PYTHON" -m venv "$venv"
pip_install() {
    "$venv/bin/python" -m pip install --no-compile --disable-pip-version-check "$@"
}

# torch first and alone: the CPU index serves torch (and its own dependencies) only, and an
# exact pin then keeps the project's "torch>=..." from pulling a CUDA build from the
# default index
pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH"
pip_install "$source${EXTRAS:+[$EXTRAS]}"

# The image's entry point and health check live in the venv: the runtime stage copies the
# venv and nothing else from this stage.
install -m 0755 "$here/entrypoint.sh" "$venv/bin/torchferry-entrypoint"
install -m 0755 "$here/healthcheck.py" "$venv/bin/torchferry-healthcheck"

# Bytecode now, once: the image runs with a read-only root and PYTHONDONTWRITEBYTECODE.
# unchecked-hash: a .pyc is used without comparing its source's mtime, which a copy between
# build stages need not keep; nothing in the image changes a source file. torch's test
# helpers are left out: one of them is Python 3.12 syntax, and serving never imports them.
skipped='/torch/testing/_internal/'
if [ "$BYTECODE" = no-torch ]; then
    skipped='/site-packages/(torch|sympy)/'
fi
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    -x "$skipped" "$venv/lib"
