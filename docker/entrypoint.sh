#!/bin/sh
# The image's entry point: `torchferry serve` with the image's store, address and ports
# (TORCHFERRY_* variables, set by the Dockerfile), followed by the container's arguments.
#
#   (no arguments), or options     torchferry serve IMAGE-DEFAULTS OPTIONS
#   serve [options]                the same
#   any other command              run as is: `torchferry --version`, `torchferry token ...`
#
# A default is left out where the arguments give that option in any spelling (KServe's
# `--http_port`, ours, or its `--no-...` form), so that the two never clash; and where they
# name a model directory (`--model_dir`, KServe's), the store default is left out too.
set -eu

case "${1-}" in
    serve) shift ;;
    "" | -*) ;;
    *) exec "$@" ;;
esac

store=1 host=1 http=1 grpc=1 management=1 metrics=1
for arg in "$@"; do
    case "$arg" in
        --store | --store=* | --model-dir | --model-dir=* | --model_dir | --model_dir=*) store= ;;
        --host | --host=*) host= ;;
        --port | --port=* | --rest-port | --rest-port=* | --http_port | --http_port=*) http= ;;
        --grpc-port | --grpc-port=* | --grpc_port | --grpc_port=* | --no-grpc) grpc= ;;
        --management-port | --management-port=* | --no-management) management= ;;
        --metrics-port | --metrics-port=* | --no-metrics) metrics= ;;
    esac
done

# prepended last to first, so that they come before the container's own arguments
if [ -n "$metrics" ]; then set -- --metrics-port "${TORCHFERRY_METRICS_PORT:?is set by the image}" "$@"; fi
if [ -n "$management" ]; then set -- --management-port "${TORCHFERRY_MANAGEMENT_PORT:?is set by the image}" "$@"; fi
if [ -n "$grpc" ]; then set -- --grpc-port "${TORCHFERRY_GRPC_PORT:?is set by the image}" "$@"; fi
if [ -n "$http" ]; then set -- --port "${TORCHFERRY_HTTP_PORT:?is set by the image}" "$@"; fi
if [ -n "$host" ]; then set -- --host "${TORCHFERRY_HOST:?is set by the image}" "$@"; fi
if [ -n "$store" ]; then set -- --store "${TORCHFERRY_STORE:?is set by the image}" "$@"; fi
exec torchferry serve "$@"
