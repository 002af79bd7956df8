#!/usr/bin/env bash
# Entrypoint of both edgeports images: record where we are (`edgeports doctor`), then run the sweep
# with every result row in $EDGEPORTS_RESULTS/edgeports.db (default /results, a mounted volume).
#
#   docker run ... IMAGE --backend eager,trt --models mamba-130m --lens 1k-16k   -> edgeports run ...
#   docker run ... IMAGE pytest -m gpu tests/                                     -> runs that command
#
# Works outside a container too: EDGEPORTS_RESULTS=/tmp/r containers/entrypoint.sh --models tiny-llama ...
set -euo pipefail

results="${EDGEPORTS_RESULTS:-/results}"

# A first argument that is a command (not an `edgeports run` option) is run as is: a shell, pytest,
# `edgeports report ...`.
if [[ $# -gt 0 && "$1" != -* ]] && command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi

mkdir -p "$results"
if [[ ! -w "$results" ]]; then
    echo "edgeports: results directory $results is not writable (mount a volume there: -v \$PWD/results:/results)" >&2
    exit 2
fi

# doctor describes the platform and which backends are usable; a failure there is reported, and the
# sweep still runs (each cell records its own error).
edgeports doctor || echo "edgeports: 'edgeports doctor' failed (exit $?); continuing with the sweep" >&2

# --db comes last so that it wins over a --db in the arguments: results always land on the volume.
exec edgeports run "$@" --db "$results/edgeports.db"
