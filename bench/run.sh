#!/usr/bin/env bash
# deploy-sentinel's benchmark: builds the release binary and the bench helpers, then runs the five
# parts (trigger latency beside the reference watchers, idle cost, storm, failure detection,
# overhead per deploy) in one run and prints one report. Run as root on Debian 12:
#   bench/run.sh                         # ~4 min after the build
#   bench/run.sh --parts latency -n 50   # options go to bench/suite.py (--help lists them)
# Installs what the peers need when missing (inotify-tools, incron, python3, git).
# BUILD_DIR (default build, RelWithDebInfo as in the README) and BENCH_SCRATCH
# (default /tmp/sentinel-bench) move the build and the per-run files.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$src/build}
scratch=${BENCH_SCRATCH:-/tmp/sentinel-bench}

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run it as root (incron's peer, SIGSTOP of its own daemons)" >&2; exit 1; }
missing=
for tool in inotifywait:inotify-tools incrond:incron python3:python3 git:git; do
    command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    echo "bench/run.sh: installing$missing" >&2
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSENTINEL_BENCH=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target deploy-sentinel bench-stamp bench-ref-watch fake-service >/dev/null

bin=$scratch-bin
rm -rf "$bin" && mkdir -p "$bin"
cp "$build/deploy-sentinel" "$build/fake-service" "$bin/"
cp "$build/bench-stamp" "$bin/stamp"
cp "$build/bench-ref-watch" "$bin/ref-watch"
exec python3 "$src/bench/suite.py" --bin "$bin" --scratch "$scratch" "$@"
