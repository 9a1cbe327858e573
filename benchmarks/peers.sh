#!/usr/bin/env bash
# The peer comparison (../shared/peers: arcface_torch, Keras_insightface and tfface on the same nets, fp32, CPU or
# GPU), run against this checkout:
#   bash benchmarks/peers.sh [DEST] -- --nets mbf1 mbf r18 r50 --batch 32 --warmup 2 --steps 5 --rounds 2
# DEST (default /tmp/tfface-peers) gets a copy of the peer harness and its two virtualenvs (setup.sh, ~5 min the
# first time). The harness's tfface driver imports tools.bench_train, which is benchmarks.bench_train here: the
# copy is pointed there (../shared is not edited). Needs this checkout's .venv (make setup).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
DEST=/tmp/tfface-peers
if [ $# -gt 0 ] && [ "$1" != "--" ]; then DEST=$1; shift; fi
[ "${1:-}" = "--" ] && shift
[ -f "$PEERS/setup.sh" ] || { echo "peers.sh: error: no peer harness at $PEERS (set PEERS=...)" >&2; exit 2; }
[ -x "$ROOT/.venv/bin/python" ] || { echo "peers.sh: error: $ROOT/.venv is missing (run make setup)" >&2; exit 2; }
bash "$PEERS/setup.sh" "$DEST"
sed -i 's/^import tools\.bench_train as bench_train/import benchmarks.bench_train as bench_train/' "$DEST/bench_tfface.py"
exec python3 "$DEST/run_all.py" --tfface-dir "$ROOT" "$@"
