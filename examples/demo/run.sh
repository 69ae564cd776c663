#!/bin/bash
# The deploy-sentinel demo: a good deploy restarted and verified, then a broken commit
# restarted, found unhealthy, and reverted to the known-good commit.
# Usage: examples/demo/run.sh [BUILD_DIR]   (default: build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
sentinel="$build/deploy-sentinel"
service="$build/fake-service"
work=$(mktemp -d /tmp/deploy-sentinel-demo.XXXXXX)
port=$((20000 + RANDOM % 20000))
config="$work/sentinel.toml"
log="$work/sentinel.log"
daemon_pid=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  "$service" stop --state "$work/service" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "demo FAILED: $*" >&2; exit 1; }
git_() { git -C "$work/checkout" -c user.name="demo agent" -c user.email=agent@demo.invalid "$@"; }
commit() {  # commit MODE MESSAGE: the service's behaviour lives in the checkout, like real code
  echo "$1" >"$work/checkout/service-mode"
  echo "$2" >>"$work/checkout/CHANGES"
  git_ add -A
  git_ commit -q -m "$2"
  git_ rev-parse HEAD
}
# Waits for a line of the sentinel's log: the demo shows real log lines, not a script's guess.
wait_for_log() {
  for _ in $(seq 1 200); do grep -q -- "$1" "$log" && return 0; sleep 0.1; done
  fail "no log line '$1' within 20 s"
}

say "setting up a demo production in $work"
mkdir -p "$work/checkout" "$work/markers" "$work/service"
git_ init -q -b main
echo healthy >"$work/checkout/service-mode"
git_ add service-mode
git_ commit -q -m "first version"
sed -e "s|@WORK@|$work|g" -e "s|@PORT@|$port|g" -e "s|@SERVICE@|$service|g" "$here/demo.toml.in" >"$config"
"$sentinel" check-config "$config"
(cd "$work/checkout" && "$service" restart --port "$port" --state "$work/service")

say "starting deploy-sentinel (its log follows, live)"
"$sentinel" run --config "$config" > >(tee "$log") 2>&1 &
daemon_pid=$!
wait_for_log "demo: watching"

say "1. the agent commits a good change and stages it"
good=$(commit healthy "faster search")
"$sentinel" stage --config "$config" --message "faster search"
wait_for_log "deployed ${good:0:12}"

say "2. the agent commits a broken change and stages it"
bad=$(commit unhealthy "broken cache")
"$sentinel" stage --config "$config" --message "broken cache"
wait_for_log "reverted ${bad:0:12}"

say "what the agent reads in $work/markers/.deploy-reverted"
cat "$work/markers/.deploy-reverted"
[ "$(git_ rev-parse HEAD)" = "$good" ] || fail "the checkout is not back on $good"
curl_health() { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -1 <&3; }
curl_health | grep -q " 200" || fail "the service is not healthy after the revert"

say "deploy-sentinel status"
"$sentinel" status --config "$config"
say "demo passed: ${good:0:12} deployed, ${bad:0:12} reverted to it, production healthy"
