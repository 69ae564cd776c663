#!/bin/bash
# The real-systemd test: boots a Debian 12 container (systemd-nspawn --boot, its own network
# namespace, its own /tmp) with the freshly built .deb and runs inside.sh there. Never touches
# the host's systemd. Needs root, debootstrap and systemd-container; fails loudly without them.
# Usage: container_test.sh BUILD_DIR   (the build whose .deb and fake-service are tested)
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
[ $# = 1 ] || fail "usage: $0 BUILD_DIR"
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || fail "the container test needs root"
for tool in systemd-nspawn debootstrap; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run .ci/install-deps (apt-get install debootstrap systemd-container)"
done
t0=$(date +%s)

cmake --build "$build" --target package >/dev/null || fail "cannot build the package"
deb=$(ls -t "$build"/deploy-sentinel_*.deb | head -1)
rootfs=$("$here/rootfs.sh") || fail "cannot build the Debian 12 root file system (debootstrap, network?)"
echo "package $deb, root file system $rootfs ($(( $(date +%s) - t0 ))s)"

work="$build/systemd-test"
rm -rf "$work"
mkdir -p "$work/e2e/out"
trap 'rm -rf "$work/root"' EXIT
cp -a --reflink=auto "$rootfs" "$work/root"
cp "$deb" "$work/e2e/deploy-sentinel.deb"
cp "$build/fake-service" "$here/inside.sh" "$here/botical-prod.service" "$here/other.service" \
   "$here/config.toml" "$here/../../packaging/polkit/50-deploy-sentinel.rules" "$work/e2e/"
cp "$here/sentinel-e2e.service" "$work/root/etc/systemd/system/"
ln -s ../sentinel-e2e.service "$work/root/etc/systemd/system/multi-user.target.wants/sentinel-e2e.service"

status=0
timeout --kill-after=10 300 systemd-nspawn --quiet --register=no --keep-unit --private-network \
  --directory="$work/root" --bind="$work/e2e:/e2e" --boot systemd.show_status=no \
  > "$work/console.log" 2>&1 || status=$?
cat "$work/e2e/out/inside.log" 2>/dev/null || true
if [ "$status" != 0 ]; then
  echo "--- container console (tail)"
  tail -40 "$work/console.log"
  fail "the container test failed (exit $status); logs in $work"
fi
grep -q "== .*passed" "$work/e2e/out/inside.log" || fail "the container exited 0 but the test did not pass"
echo "--- journalctl -u deploy-sentinel"
cat "$work/e2e/out/journal.txt"
echo "passed in $(( $(date +%s) - t0 ))s"
