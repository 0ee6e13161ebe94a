#!/usr/bin/env bash
# The GPU check (issue 20): precision variants, speed against diffusers' AudioLDM2Pipeline, batch scaling and
# the throughput goals, on one GPU in under 8 minutes, with the full-size random-weight layout built on the spot.
#   bash benchmarks/gpu_check.sh             # on a GPU (the table goes into benchmarks/README.md)
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: tiny model, CPU, 2 steps
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
