#!/bin/bash
# The deploy-sentinel demo: a good deploy restarted and verified, then a broken commit
# restarted, found unhealthy, and reverted to the known-good commit; then, with a pre-flight
# configured, the same kind of broken commit refused before production is touched. A prober
# measures production's downtime for the broken commit both ways.
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
  [ -n "${prober_pid:-}" ] && kill "$prober_pid" 2>/dev/null || true
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

# Production's /health every 20 ms, one "TIME up|down" line each, for the downtime figures.
probes="$work/probes.log"
probe_loop() {
  while :; do
    t=$(date +%s.%N)
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -1 <&3" 2>/dev/null | grep -q " 200"; then
      echo "$t up"
    else
      echo "$t down"
    fi
    sleep 0.02
  done
}
probe_loop >"$probes" &
prober_pid=$!
# downtime FROM_LINE: seconds production answered no 200 in the probes after line FROM_LINE
downtime() {
  tail -n +"$1" "$probes" | awk '{ if (prev != "" && state == "down") sum += $1 - prev; prev = $1; state = $2 }
    END { printf "%.2f", sum }'
}

say "starting deploy-sentinel (its log follows, live)"
"$sentinel" run --config "$config" > >(tee "$log") 2>&1 &
daemon_pid=$!
wait_for_log "demo: watching"

say "1. the agent commits a good change and stages it"
good=$(commit healthy "faster search")
"$sentinel" stage --config "$config" --message "faster search"
wait_for_log "deployed ${good:0:12}"

say "2. the agent commits a broken change and stages it"
from=$(wc -l <"$probes")
bad=$(commit unhealthy "broken cache")
"$sentinel" stage --config "$config" --message "broken cache"
wait_for_log "reverted ${bad:0:12}"
down_without=$(downtime "$from")

say "what the agent reads in $work/markers/.deploy-reverted"
cat "$work/markers/.deploy-reverted"
[ "$(git_ rev-parse HEAD)" = "$good" ] || fail "the checkout is not back on $good"
curl_health() { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -1 <&3; }
curl_health | grep -q " 200" || fail "the service is not healthy after the revert"

say "3. the same kind of broken change, now with a pre-flight (bubblewrap sandbox) configured"
cat >>"$config" <<TOML

[target.preflight]
command = ["sh", "-c", "exec $service serve --port \$PORT --mode \$(cat service-mode)"]
env = { PORT = "{port}" }
health = "http://127.0.0.1:{port}/health"
grace = "200ms"
interval = "250ms"
successes = 3
deadline = "3s"
TOML
"$sentinel" check-config "$config"
kill -HUP "$daemon_pid"   # reload: the target starts again with the pre-flight
wait_for_log "SIGHUP: "
restarts_before=$(wc -l <"$work/service/restarts.log")
from=$(wc -l <"$probes")
bad2=$(commit unhealthy "broken cache, again")
"$sentinel" stage --config "$config" --message "broken cache, again"
wait_for_log "rejected ${bad2:0:12} after its pre-flight"
down_with=$(downtime "$from")
[ "$(wc -l <"$work/service/restarts.log")" = "$restarts_before" ] || fail "production was restarted"
[ "$(git_ rev-parse HEAD)" = "$good" ] || fail "the checkout is not back on $good"
say "what the agent reads in $work/markers/.deploy-rejected"
cat "$work/markers/.deploy-rejected"

say "deploy-sentinel status"
"$sentinel" status --config "$config"
say "production's downtime for a broken commit: ${down_without} s without pre-flight, ${down_with} s with it"
say "demo passed: ${good:0:12} deployed, ${bad:0:12} reverted to it, ${bad2:0:12} refused by pre-flight, production healthy"
