#!/bin/bash
# The container test proper, run by sentinel-e2e.service inside a booted Debian 12 (systemd as
# pid 1, journald, D-Bus, polkitd): installs the .deb and drives the shipped unit. Each check
# waits for its condition with a deadline; the first failure ends the test with exit 1.
set -uo pipefail
out=/e2e/out
app=/srv/botical-prod/app
markers=/srv/botical-prod/markers
config=/etc/deploy-sentinel/config.toml
started=$(date +%s)

step() { echo "== $(( $(date +%s) - started ))s: $*"; }
fail() {
  echo "FAIL: $*"
  journalctl -u deploy-sentinel -u botical-prod --no-pager -o short-monotonic | tail -60
  exit 1
}
# wait_until SECONDS COMMAND...: true once COMMAND succeeds; false after SECONDS.
wait_until() {
  local deadline=$(( $(date +%s%N) + $1 * 1000000000 ))
  shift
  until "$@"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
as_sentinel() { runuser -u deploy-sentinel -- "$@"; }
agent_git() { as_sentinel git -C "$app" -c user.name=agent -c user.email=agent@example.invalid "$@"; }
# commit_mode MODE: the agent commits a change that makes production run in MODE; prints the SHA.
commit_mode() {
  as_sentinel sh -c "echo $1 > $app/service-mode && date +%s%N >> $app/notes"
  agent_git add -A && agent_git commit -qm "service runs $1" && agent_git rev-parse HEAD
}
stage() { as_sentinel deploy-sentinel stage --config "$config" >/dev/null; }
# journal_has FIELD=VALUE...: the sentinel logged an entry with all these fields.
journal_has() { [ -n "$(journalctl -u deploy-sentinel "$@" -o cat --no-pager 2>/dev/null)" ]; }
prop() { systemctl show -p "$2" --value "$1"; }
healthy() {
  local line
  line=$( (exec 3<>/dev/tcp/127.0.0.1/6001 && printf 'GET /health HTTP/1.0\r\nHost: prod\r\n\r\n' >&3 && head -1 <&3) 2>/dev/null)
  [[ $line == *" 200 "* ]]
}
starts() { wc -l < /var/lib/botical-starts; }

step "install the package"
dpkg -i /e2e/deploy-sentinel.deb || fail "dpkg -i failed"
getent passwd deploy-sentinel >/dev/null || fail "postinst created no user deploy-sentinel"
[ "$(prop deploy-sentinel LoadState)" = loaded ] || fail "systemd does not know the unit after postinst"
[ -e /usr/share/man/man1/deploy-sentinel.1.gz ] || fail "no man page"

step "systemd-analyze verify"
systemd-analyze verify /lib/systemd/system/deploy-sentinel.service > "$out/verify.txt" 2>&1
verify_rc=$?
cat "$out/verify.txt"
[ "$verify_rc" = 0 ] && [ ! -s "$out/verify.txt" ] || fail "systemd-analyze verify is not clean (exit $verify_rc)"

systemd-analyze security deploy-sentinel.service --no-pager | tail -1

step "production, polkit rule, config"
install -d -o deploy-sentinel -g deploy-sentinel "$app" "$markers"
agent_git init -q
commit_mode healthy >/dev/null || fail "cannot commit"
cp /e2e/botical-prod.service /e2e/other.service /etc/systemd/system/
cp /e2e/50-deploy-sentinel.rules /etc/polkit-1/rules.d/
cp /e2e/config.toml "$config"
systemctl daemon-reload
systemctl start botical-prod other || fail "cannot start production"
wait_until 10 healthy || fail "production never became healthy"
as_sentinel systemctl restart botical-prod || fail "the polkit rule does not let deploy-sentinel restart botical-prod"
if as_sentinel systemctl restart other 2>/dev/null; then fail "the polkit rule lets deploy-sentinel restart other units"; fi

step "the sentinel starts: active once READY=1"
systemctl enable --now deploy-sentinel || fail "systemctl start deploy-sentinel failed"
[ "$(systemctl is-active deploy-sentinel)" = active ] || fail "not active after start"
status=$(prop deploy-sentinel StatusText)
echo "StatusText: $status"
[[ $status == "prod: watching"* ]] || fail "STATUS= is '$status'"

step "a staged commit restarts production exactly once, with its journal fields"
wait_until 10 healthy || fail "production unhealthy before the deploy"
before=$(starts)
invocation=$(prop botical-prod InvocationID)
good=$(commit_mode healthy) || fail "cannot commit"
stage || fail "stage failed"
wait_until 20 journal_has DEPLOY_RESULT=deployed DEPLOY_COMMIT="$good" || fail "no DEPLOY_RESULT=deployed for $good"
[ "$(starts)" = $((before + 1)) ] || fail "production started $(( $(starts) - before )) times for one deploy"
[ "$(prop botical-prod InvocationID)" != "$invocation" ] || fail "production's InvocationID did not change"
[ "$(tail -1 /var/lib/botical-starts)" = "$(prop botical-prod InvocationID)" ] || fail "InvocationID changed more than once"
journal_has DEPLOY_TARGET=prod DEPLOY_PHASE=restarting DEPLOY_COMMIT="$good" || fail "no DEPLOY_PHASE=restarting entry"
journal_has DEPLOY_TARGET=prod DEPLOY_PHASE=verifying DEPLOY_COMMIT="$good" || fail "no DEPLOY_PHASE=verifying entry"
journalctl -u deploy-sentinel -o cat --no-pager | grep -q "answered by the new process, pid $(prop botical-prod MainPID)" ||
  fail "the new process was not confirmed as the listener from inside the sandbox"

step "a broken commit is reverted"
bad=$(commit_mode unhealthy) || fail "cannot commit"
stage || fail "stage failed"
wait_until 30 journal_has DEPLOY_RESULT=reverted DEPLOY_COMMIT="$bad" || fail "no DEPLOY_RESULT=reverted for $bad"
[ "$(agent_git rev-parse HEAD)" = "$good" ] || fail "HEAD is not the known-good commit after the revert"
[ -e "$markers/.deploy-reverted" ] || fail "no .deploy-reverted for the agent"
wait_until 10 healthy || fail "production unhealthy after the revert"
journalctl -u deploy-sentinel DEPLOY_RESULT=reverted -o verbose --no-pager > "$out/reverted-entry.txt"

step "reload with a bad config keeps the running one"
pid=$(prop deploy-sentinel MainPID)
cp "$config" "$config.good"
echo 'this is = not TOML' > "$config"
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reload deploy-sentinel || fail "systemctl reload failed"
wait_until 10 sh -c "journalctl -u deploy-sentinel --since '$since' -o cat | grep -qi 'sighup\|reload\|config'" ||
  fail "the daemon said nothing about the reload"
[ "$(systemctl is-active deploy-sentinel)" = active ] || fail "not active after a reload with a bad config"
[ "$(prop deploy-sentinel MainPID)" = "$pid" ] || fail "the daemon was replaced by a reload"
mv "$config.good" "$config"

step "stop during a restart is clean, and the next start finishes the deploy"
touch /srv/botical-prod/slow-start
next=$(commit_mode healthy) || fail "cannot commit"
stage || fail "stage failed"
wait_until 10 journal_has DEPLOY_PHASE=restarting DEPLOY_COMMIT="$next" || fail "the restart of $next did not begin"
t0=$(date +%s%N)
systemctl stop deploy-sentinel || fail "systemctl stop failed"
echo "stopped in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
[ "$(prop deploy-sentinel Result)" = success ] || fail "stop result: $(prop deploy-sentinel Result)"
[ "$(prop deploy-sentinel ExecMainStatus)" = 0 ] || fail "exit status $(prop deploy-sentinel ExecMainStatus)"
[ -e "$markers/.deploy-in-progress" ] || fail "the deploy's record is gone after the stop"
rm /srv/botical-prod/slow-start
systemctl start deploy-sentinel || fail "restart of the sentinel failed"
wait_until 20 journal_has DEPLOY_RESULT=deployed DEPLOY_COMMIT="$next" || fail "the interrupted deploy of $next was not finished"

step "the watchdog restarts a frozen daemon"
mkdir -p /etc/systemd/system/deploy-sentinel.service.d
printf '[Service]\nWatchdogSec=2s\nLimitCORE=0\n' > /etc/systemd/system/deploy-sentinel.service.d/test-watchdog.conf
systemctl daemon-reload
systemctl restart deploy-sentinel || fail "restart with the short watchdog failed"
pid=$(prop deploy-sentinel MainPID)
kill -STOP "$pid"
new_main() { local p; p=$(prop deploy-sentinel MainPID); [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$(systemctl is-active deploy-sentinel)" = active ]; }
wait_until 20 new_main || fail "the frozen daemon (pid $pid) was not replaced"
journalctl -u deploy-sentinel -o cat --no-pager | grep -q "Watchdog timeout" || fail "no watchdog timeout in the journal"
[ "$(prop deploy-sentinel NRestarts)" -ge 1 ] || fail "NRestarts is $(prop deploy-sentinel NRestarts)"

step "passed"
journalctl -u deploy-sentinel --no-pager -o short-monotonic > "$out/journal.txt"
exit 0
