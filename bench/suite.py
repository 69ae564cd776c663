#!/usr/bin/env python3
"""deploy-sentinel's benchmark suite: runs the five parts of the speed issue in one run and
prints one report (see README.md, "Speed"). Started by bench/run.sh, which builds the programs.
Linux only (inotify, /proc); needs root for incron's peer and for SIGSTOP-free cleanup."""
import argparse
import ctypes
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from peer_driver import field, read  # beside this file: python3 puts a script's own directory on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
IN_MODIFY, IN_CREATE, IN_MOVED_TO, IN_DELETE = 0x002, 0x100, 0x080, 0x200
libc = ctypes.CDLL(None, use_errno=True)


# ---- small tools ---------------------------------------------------------------------------

class Inotify:
    """Just enough inotify for the suite to sleep until the daemon has acted."""

    def __init__(self):
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path, mask):
        if libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch " + path)

    def wait(self, timeout):
        if select.select([self.fd], [], [], timeout)[0]:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self):
        os.close(self.fd)


def snapshot(pid):
    """The daemon process itself (not its children): ticks incl. reaped children, precise run
    time and voluntary context switches of all its threads, RSS, PSS and private memory."""
    st = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    s = dict(ticks=sum(map(int, st[11:15])), own_ticks=sum(map(int, st[11:13])),
             rss=field(f"/proc/{pid}/status", "VmRSS:"),
             pss=field(f"/proc/{pid}/smaps_rollup", "Pss:"),
             private=field(f"/proc/{pid}/smaps_rollup", "Private_Clean:") +
             field(f"/proc/{pid}/smaps_rollup", "Private_Dirty:"),
             threads=0, vcsw=0, run_ns=0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        t = f"/proc/{pid}/task/{tid}"
        s["threads"] += 1
        s["vcsw"] += field(f"{t}/status", "voluntary_ctxt_switches:")
        s["run_ns"] += int(read(f"{t}/schedstat").split()[0])
    return s


def pct(v, q):
    v = sorted(v)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def table(cols, rows):
    rows = [[str(x) for x in r] for r in rows]
    width = [max(len(r[c]) for r in rows + [cols]) for c in range(len(cols))]
    line = lambda r: "  ".join(x.ljust(w) if c == 0 else x.rjust(w) for c, (x, w) in enumerate(zip(r, width)))
    return "\n".join([line(cols), line(["-" * w for w in width])] + [line(r) for r in rows])


def q(s):
    return json.dumps(str(s))  # a TOML basic string


def arr(argv):
    return "[" + ", ".join(q(a) for a in argv) + "]"


def make_checkout(path):
    subprocess.run(["git", "init", "-q", path], check=True)
    subprocess.run(["git", "-C", path, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q",
                    "--allow-empty", "-m", "bench"], check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(port, timeout=1.0):
    """GET /health on 127.0.0.1:port answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def records(path, with_end=False):
    """stamp's lines: (t1, t2) with -e, else t1."""
    try:
        lines = read(path).splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        f = line.split()
        out.append((int(f[0]), int(f[2])) if with_end else int(f[0]))
    return out


def wait_for(cond, timeout, step=0.02):
    """Polls a condition the suite cannot wait on otherwise; False at the deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Daemon:
    """One deploy-sentinel with its own config, state, log and copy of the binary (a copy, so
    that daemons running at once do not share the binary's pages and PSS stays honest)."""

    def __init__(self, ctx, work, targets, log_level=None):
        self.work = work
        os.makedirs(work)
        self.binary = os.path.join(work, "deploy-sentinel")
        shutil.copy2(ctx.sentinel, self.binary)
        self.state = os.path.join(work, "state")
        self.names = [t["name"] for t in targets]
        lines = ["[sentinel]", f"state_dir = {q(self.state)}"]
        if log_level:
            lines.append(f"log_level = {q(log_level)}")
        for t in targets:
            lines += ["[[target]]", f"name = {q(t['name'])}", f"marker_dir = {q(t['dir'])}",
                      f"checkout = {q(t['checkout'])}", f"restart = {{ command = {arr(t['restart'])} }}"]
            if t.get("build"):
                lines += ["[target.build]", f"command = {arr(t['build'])}"]
            for table_name in ("health", "monitor"):
                if t.get(table_name):
                    lines.append(f"[target.{table_name}]")
                    lines += [f"{k} = {v}" for k, v in t[table_name].items()]
        self.config = os.path.join(work, "sentinel.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = os.path.join(work, "daemon.log")
        self.proc = None

    def start(self, timeout=30):
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([self.binary, "run", "--config", self.config], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ok = wait_for(lambda: self.proc.poll() is not None or all(self.phase(n) == "watching" for n in self.names),
                      timeout, 0.05)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError(f"daemon in {self.work} did not start: {self.tail()}")

    def phase(self, name):
        try:
            return json.loads(read(os.path.join(self.state, "targets", name, "status.json"))).get("phase")
        except (OSError, ValueError):
            return None

    def history(self, name):
        try:
            return [json.loads(l) for l in read(os.path.join(self.state, "targets", name, "history.jsonl")).splitlines()]
        except OSError:
            return []

    def tail(self):
        try:
            return read(self.log).strip().splitlines()[-1][:200]
        except (OSError, IndexError):
            return ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def target(work, name, checkout, restart, health, **extra):
    d = os.path.join(work, "markers", name)
    os.makedirs(d)
    return dict(name=name, dir=d, checkout=checkout, restart=restart, health=health, **extra)


def drop_marker(d):
    """Stages a deploy as a deploy tool does: temp file, then rename. Returns t0 (ns)."""
    tmp = os.path.join(d, ".deploy-ready.tmp")
    with open(tmp, "w") as f:
        f.write('{"staged_by": "bench"}\n')
    t0 = time.time_ns()
    os.rename(tmp, os.path.join(d, ".deploy-ready"))
    return t0


# ---- 1. trigger latency ----------------------------------------------------------------------

def part_latency(ctx):
    only = "c-ref,inotifywait,incron,ours" + (",poll-1s" if ctx.args.poll else "")
    scratch = os.path.join(ctx.scratch, "latency")
    cmd = [sys.executable, os.path.join(HERE, "peer_driver.py"), "--bin", ctx.bin, "--scratch", scratch,
           "-n", str(ctx.args.rounds), "--idle", str(ctx.args.peer_idle), "--only", only,
           "--peers", os.path.join(HERE, "peers.conf")]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    samples = {}
    for line in read(os.path.join(scratch, "samples.csv")).splitlines()[1:]:
        peer, ns = line.split(",")
        samples.setdefault(peer, []).append(int(ns) / 1000)
    ratio = ""
    if "ours" in samples and "c-ref" in samples:
        ours, ref = samples["ours"], samples["c-ref"]
        ratio = ("ours / c-ref: p50 {:.2f}x  p90 {:.2f}x  p99 {:.2f}x   (targets: 1.10x, 1.15x, 1.30x)"
                 .format(*(pct(ours, p) / pct(ref, p) for p in (.5, .9, .99))))
    return out.rstrip() + ("\n" + ratio if ratio else "")


# ---- 2. idle cost ----------------------------------------------------------------------------

def part_idle(ctx):
    seconds = ctx.args.idle
    cases = [("1 target", 1, None), ("10 targets", 10, None), ("100 targets", 100, None),
             ("1 target, monitor 1s", 1, '"1s"'), ("10 targets, monitor 1s", 10, '"1s"')]
    daemons = []
    try:
        for i, (label, n, monitor) in enumerate(cases):
            work = os.path.join(ctx.scratch, f"idle-{i}")
            checkout = os.path.join(work, "co")
            os.makedirs(work)
            make_checkout(checkout)
            probes = os.path.join(work, "probes")
            targets = [target(work, f"t{k}", checkout, [ctx.stamp, os.path.join(work, "restarts")],
                              {"command": arr([ctx.stamp, probes]), "grace": '"0s"', "successes": 1},
                              **({"monitor": {"interval": monitor}} if monitor else {}))
                       for k in range(n)]
            d = Daemon(ctx, os.path.join(work, "daemon"), targets)
            d.start()
            d.label, d.probes, d.monitor = label, probes, monitor
            daemons.append(d)
        time.sleep(1)  # start-up probes reaped, first log lines written
        before = {d: (snapshot(d.proc.pid), len(records(d.probes))) for d in daemons}
        time.sleep(seconds)
        rows = []
        for d in daemons:
            b, probes_before = before[d]
            a = snapshot(d.proc.pid)
            probes = len(records(d.probes)) - probes_before
            vcsw = a["vcsw"] - b["vcsw"]
            rows.append([d.label, vcsw, f"{(a['ticks'] - b['ticks']) * TICK_MS:.0f}",
                         f"{(a['run_ns'] - b['run_ns']) / 1e6:.1f}", probes,
                         f"{vcsw / probes:.1f}" if probes else "-", a["threads"], a["rss"], a["pss"], a["private"]])
        growth = [r for r in rows if r[0] in ("1 target", "100 targets")]
        note = ""
        if len(growth) == 2:
            note = (f"\nper extra target (1 -> 100 targets): PSS {(growth[1][8] - growth[0][8]) / 99:.1f} KiB, "
                    f"private {(growth[1][9] - growth[0][9]) / 99:.1f} KiB (target: < 64 KiB)")
        return (table(["configuration", "vol-cs", "CPU ms", "CPU ms*", "probes", "vol-cs/probe", "threads",
                       "RSS KiB", "PSS KiB", "private KiB"], rows) +
                f"\n{seconds:g} s idle window, all daemons at once, each from its own copy of the binary. "
                "vol-cs = voluntary context switches of all the daemon's threads (its wake-ups); CPU ms = "
                f"utime+stime incl. reaped children in {TICK_MS:g} ms ticks; CPU ms* = schedstat run time of "
                "the daemon's threads; probes = health command runs (a stamp) in the window." + note)
    finally:
        for d in daemons:
            d.stop()


# ---- 3. storm --------------------------------------------------------------------------------

def part_storm(ctx):
    work = os.path.join(ctx.scratch, "storm")
    os.makedirs(work)
    checkout = os.path.join(work, "co")
    make_checkout(checkout)
    results = os.path.join(work, "restarts")
    t = target(work, "storm", checkout, [ctx.stamp, results], {"command": arr(["true"]), "grace": '"0s"', "successes": 1})
    d = Daemon(ctx, os.path.join(work, "daemon"), [t])
    d.start()
    mdir, marker = t["dir"], os.path.join(t["dir"], ".deploy-ready")
    n = ctx.args.storm_files
    drops = []
    try:
        pid = d.proc.pid
        before = snapshot(pid)
        # Stopped for the first half of the storm, the daemon reads nothing while the kernel's
        # queue (fs.inotify.max_queued_events, 16384 by default) fills up and overflows: the
        # overflow is forced, not hoped for. It goes on during the second half.
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        for i in range(n):
            a = os.path.join(mdir, f"f{i}")
            os.close(os.open(a, os.O_CREAT | os.O_WRONLY, 0o644))
            os.rename(a, a + ".r")
            os.unlink(a + ".r")
            if i == n // 4:
                drops.append(drop_marker(mdir))      # lands in the overflowed queue
            elif i == n // 2:
                os.kill(pid, signal.SIGCONT)
            elif i > n // 2 and i % 250 == 0 and not os.path.exists(marker):
                drops.append(drop_marker(mdir))      # the previous one was claimed
        storm_end = time.time_ns()
        storm_s = time.monotonic() - started
        # A last marker right after the storm, once the one before it is claimed: how soon the
        # daemon is back to normal.
        claimed = wait_for(lambda: not os.path.exists(marker), 20)
        last_t0 = drop_marker(mdir) if claimed else None
        if last_t0:
            drops.append(last_t0)
        done = wait_for(lambda: len(records(results)) >= len(drops) and not os.path.exists(marker) and
                        d.phase("storm") == "watching" and
                        not os.path.exists(os.path.join(mdir, ".deploy-in-progress")), 30)
        time.sleep(0.5)  # anything extra would show up now
        after = snapshot(pid)
        recs = records(results)
        deployed = [h for h in d.history("storm") if h.get("result") == "deployed"]
        overflows = read(d.log).count("queue overflowed")
        last_t1 = [r for r in recs if last_t0 and r >= last_t0]
        react = f"{(last_t1[0] - storm_end) / 1e6:.1f}" if last_t1 else "-"
        row = [f"{n} files", f"{storm_s:.2f}", overflows, len(drops), len(recs),
               max(0, len(drops) - len(recs)), max(0, len(recs) - len(drops)), len(deployed), react,
               f"{(after['run_ns'] - before['run_ns']) / 1e6:.0f}", f"{(after['ticks'] - before['ticks']) * TICK_MS:.0f}"]
        note = "" if done else "\nnote: not every deploy had finished 30 s after the storm"
        return (table(["storm", "seconds", "overflows", "markers", "restarts", "missed", "double", "deployed",
                       "react ms", "CPU ms", "CPU ms+ch"], [row]) +
                "\nEach file is created, renamed and deleted in the marker directory. The daemon is SIGSTOPped "
                "for the first half, so the kernel queue overflows (overflows = the daemon's 'queue overflowed' "
                "log lines); one marker is dropped then, more during the second half whenever the previous one "
                "was claimed, and a last one as soon as possible after the storm. react ms = that last marker's "
                "restart (stamp's main) minus the storm's end; CPU ms = the daemon's own run time, CPU ms+ch = with "
                "its restart and health commands, from the storm's start until all deploys were done." + note)
    finally:
        d.stop()


# ---- 4. failure detection -------------------------------------------------------------------

def seed_approach(port, t_death, out):
    """The seed script's way: after a restart, 15 probes 1 s apart, then `HEAD~1`. Started at
    the death itself, its best case (the seed probes only right after a restart of its own)."""
    for k in range(15):
        if http_ok(port):
            out.append(None)
            return
        time.sleep(max(0.0, t_death / 1e9 + k + 1 - time.time()))
    out.append(time.time_ns() - t_death)


def part_failure(ctx):
    rows = []
    seed = []
    for interval_ms, trials in ((1000, ctx.args.failure_trials), (100, ctx.args.failure_trials)):
        firsts, reverts = [], []
        for trial in range(trials):
            work = os.path.join(ctx.scratch, f"failure-{interval_ms}-{trial}")
            os.makedirs(work)
            checkout = os.path.join(work, "co")
            make_checkout(checkout)
            port = free_port()
            service = subprocess.Popen([ctx.fake_service, "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            d = None
            try:
                if not wait_for(lambda: http_ok(port), 10):
                    raise RuntimeError("fake-service did not answer")
                iv = f'"{interval_ms}ms"'
                restarts, builds = os.path.join(work, "restarts"), os.path.join(work, "builds")
                t = target(work, "prod", checkout, [ctx.stamp, restarts],
                           {"url": q(f"http://127.0.0.1:{port}/health"), "confirm": q("none"), "timeout": '"1s"',
                            "grace": '"0s"', "interval": iv, "successes": 1, "deadline": f'"{3 * interval_ms}ms"'},
                           build=[ctx.stamp, builds], monitor={"interval": iv, "failures": 3})
                d = Daemon(ctx, os.path.join(work, "daemon"), [t])
                d.start()
                time.sleep(random.uniform(0, interval_ms / 1000))  # a random phase of the probes
                t_death = time.time_ns()
                service.kill()
                service.wait()
                seeder = None
                if interval_ms == 1000 and trial == 0:
                    seeder = threading.Thread(target=seed_approach, args=(port, t_death, seed))
                    seeder.start()
                wait_for(lambda: records(builds), 60, 0.05)
                r, b = records(restarts), records(builds)
                if r:
                    firsts.append((r[0] - t_death) / 1e6)
                if b:
                    reverts.append((b[0] - t_death) / 1e6)
                if seeder:
                    seeder.join()
            finally:
                if d:
                    d.stop()
                if service.poll() is None:
                    service.kill()
                    service.wait()
        fmt = lambda v: (f"{statistics.median(v):.0f} / {max(v):.0f}" if v else "-")
        rows.append([f"deploy-sentinel, monitor {interval_ms} ms, 3 failures", trials, fmt(firsts), fmt(reverts)])
    rows.append(["seed: 15 probes 1 s apart, then HEAD~1", len(seed), "-",
                 f"{seed[0] / 1e6:.0f}" if seed and seed[0] else "-"])
    return (table(["approach", "trials", "restart ms (median / max)", "revert starts ms (median / max)"], rows) +
            "\nFrom production's death (fake-service SIGKILLed, its port closed, at a random phase of the probes) "
            "to the recovery restart (the restart command's main) and to the revert's build (after `git reset "
            "--hard` to the known-good commit; the restart did not bring production back). Ours: [target.monitor] "
            "interval as shown, failures = 3; verify after the recovery restart: grace 0, probes at the same "
            "interval, deadline 3 intervals. The seed never probes between deploys; its figure is its best case "
            "(probing starts at the death).")


# ---- 5. overhead per deploy -----------------------------------------------------------------

def part_overhead(ctx):
    work = os.path.join(ctx.scratch, "overhead")
    os.makedirs(work)
    checkout = os.path.join(work, "co")
    make_checkout(checkout)
    restarts, healths = os.path.join(work, "restarts"), os.path.join(work, "healths")
    t = target(work, "o", checkout, [ctx.stamp, "-e", restarts],
               {"command": arr([ctx.stamp, "-e", healths]), "grace": '"0s"', "successes": 1})
    d = Daemon(ctx, os.path.join(work, "daemon"), [t])
    d.start()
    history_dir = os.path.join(d.state, "targets", "o")
    history = os.path.join(history_dir, "history.jsonl")
    ino = Inotify()
    ino.watch(history_dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO)
    n = ctx.args.deploys
    starts, dones = [], []
    try:
        count = lambda: read(history).count("\n") if os.path.exists(history) else 0
        for i in range(n):
            t0 = drop_marker(t["dir"])
            deadline = time.monotonic() + 10
            while count() <= i and time.monotonic() < deadline:
                ino.wait(0.5)
            dones.append(time.time_ns())
            starts.append(t0)
            if count() <= i:
                raise RuntimeError(f"deploy {i} did not finish: {d.tail()}")
    finally:
        ino.close()
        d.stop()
    first = starts[0]
    rs = [r for r in records(restarts, True) if r[0] >= first]
    hs = [h for h in records(healths, True) if h[0] >= first]
    if len(rs) != n or len(hs) != n:
        raise RuntimeError(f"{len(rs)} restarts and {len(hs)} health checks for {n} deploys")
    own, claim, between, after, total = [], [], [], [], []
    for t0, done, (ra, rb), (ha, hb) in zip(starts, dones, rs, hs):
        claim.append((ra - t0) / 1000)
        between.append((ha - rb) / 1000)
        after.append((done - hb) / 1000)
        own.append(claim[-1] + between[-1] + after[-1])
        total.append((done - t0) / 1000)
    rows = [[name, f"{pct(v, .5):.0f}", f"{pct(v, .9):.0f}", f"{pct(v, .99):.0f}", f"{max(v):.0f}"]
            for name, v in (("own time per deploy (sum of the three below)", own),
                            ("  marker renamed -> restart command's main", claim),
                            ("  restart command's end -> health command's main", between),
                            ("  health command's end -> history line seen", after),
                            ("whole deploy, marker -> history line seen", total))]
    return (table(["per deploy (µs)", "p50", "p90", "p99", "max"], rows) +
            f"\n{n} deploys one after another; restart and health commands are stamp -e (instant), grace 0, one "
            "healthy probe, log level info. Own time = everything but the two commands' own run time (from their "
            "main() to just before their last write), so it includes spawning and reaping them, every record and "
            "status write, the fsyncs (record after the spawn, known-good, history) and logging; the suite's own "
            "inotify wake-up is charged to the daemon too. Target: p99 <= 5 ms.")


# ---- the report ------------------------------------------------------------------------------

PARTS = {"latency": ("1. Trigger latency: marker rename -> restart command's main(), µs", part_latency),
         "idle": ("2. Idle cost", part_idle),
         "storm": ("3. Storm", part_storm),
         "failure": ("4. Failure detection", part_failure),
         "overhead": ("5. Overhead per deploy", part_overhead)}


class Context:
    def __init__(self, args):
        self.args = args
        self.bin = os.path.abspath(args.bin)
        self.sentinel = os.path.join(self.bin, "deploy-sentinel")
        self.stamp = os.path.join(self.bin, "stamp")
        self.fake_service = os.path.join(self.bin, "fake-service")
        self.scratch = os.path.abspath(args.scratch)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="dir with deploy-sentinel, stamp, ref-watch, fake-service")
    ap.add_argument("--scratch", default="/tmp/sentinel-bench")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    ap.add_argument("-n", "--rounds", type=int, default=100, help="latency rounds")
    ap.add_argument("--peer-idle", type=float, default=10, help="idle window of the latency part, s")
    ap.add_argument("--poll", action="store_true", help="add the 1 s poll loop to the latency part (slow)")
    ap.add_argument("--idle", type=float, default=60, help="idle window of the idle part, s")
    ap.add_argument("--storm-files", type=int, default=10000)
    ap.add_argument("--failure-trials", type=int, default=3)
    ap.add_argument("--deploys", type=int, default=1000)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    random.seed(args.seed)
    ctx = Context(args)
    subprocess.run(["rm", "-rf", ctx.scratch], check=True)
    os.makedirs(ctx.scratch)
    libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: daemons' leftovers are ours to reap
    cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines() if l.startswith("model name")), "?")
    print(f"# deploy-sentinel bench: {os.uname().release}, {os.cpu_count()} CPUs ({cpu}), "
          f"loadavg {' '.join(read('/proc/loadavg').split()[:3])} at start", flush=True)
    failed = False
    for name in args.parts.split(","):
        title, run = PARTS[name]
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        try:
            body = run(ctx)
        except Exception as e:  # one broken part must not hide the others
            body = f"FAILED: {type(e).__name__}: {e}"
            failed = True
        print(f"\n## {title}\n{body}", flush=True)
    print(f"\n# loadavg {' '.join(read('/proc/loadavg').split()[:3])} at end")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
