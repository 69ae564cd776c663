#!/usr/bin/env python3
"""Marker-watcher reaction benchmark (part 1 of bench/suite.py; copied from the shared
peer-bench harness, whose README explains the method): runs every watcher from the peers file
at once, drops markers into their directories in shuffled round-robin order, and prints one
comparison table.  Linux only (inotify, /proc)."""
import argparse
import ctypes
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time

MARKER = ".deploy-ready"
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
IN_MODIFY, IN_DELETE = 0x002, 0x200
libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    """Just enough inotify for the driver to sleep until a watcher has acted."""

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


def start_syslog_sink(path):
    """Stands in for journald: a /dev/log-style datagram socket, drained and
    dropped by a thread of the driver (so it is charged to no watcher)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)

    def drain():
        while True:
            sock.recv(65536)
    threading.Thread(target=drain, daemon=True).start()


class Peer:
    def __init__(self, name, gap, cmd, scratch, subs):
        self.name, self.gap = name, gap
        self.work = os.path.join(scratch, name)
        self.dir = os.path.join(self.work, "d")
        self.marker = os.path.join(self.dir, MARKER)
        self.results = os.path.join(self.work, "results")
        subs = dict(subs, work=self.work, dir=self.dir, marker=self.marker,
                    results=self.results)
        for key, val in subs.items():
            cmd = cmd.replace("{%s}" % key, val)
        self.cmd = cmd
        self.samples = []               # latencies in ns
        self.miss = self.extra = self.stuck = 0
        self.offset = 0                 # how far into results we have read
        self.proc = None
        self.note = ""
        self.idle = {}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def load_peers(paths, only, scratch, subs):
    peers = []
    for path in paths:
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, gap, cmd = line.split(None, 2)
            lo, _, hi = gap.partition("-")
            if not only or name in only:
                peers.append(Peer(name, (float(lo), float(hi or lo)), cmd, scratch, subs))
    return peers


def read(path):
    with open(path) as f:
        return f.read()


def field(path, key):
    """Number after `key` in a /proc file; 0 if absent (e.g. a zombie's VmRSS)."""
    try:
        for line in read(path).splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_tree(root):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(read(f"/proc/{d}/stat").rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def snapshot(root):
    """Per-process figures for the watcher's whole process tree."""
    snap = {}
    for pid in proc_tree(root):
        try:
            st = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
            p = dict(ticks=sum(map(int, st[11:15])),    # utime stime cutime cstime
                     rss=field(f"/proc/{pid}/status", "VmRSS:"),
                     pss=field(f"/proc/{pid}/smaps_rollup", "Pss:"),
                     vcsw=0, run_ns=0)
            for tid in os.listdir(f"/proc/{pid}/task"):
                t = f"/proc/{pid}/task/{tid}"
                p["vcsw"] += field(f"{t}/status", "voluntary_ctxt_switches:")
                p["run_ns"] += int(read(f"{t}/schedstat").split()[0])
        except (OSError, IndexError, ValueError):
            continue                                    # reaped meanwhile
        snap[pid] = p
    return snap


def idle_figures(before, after):
    total = lambda s, k: sum(p[k] for p in s.values())
    both = before.keys() & after.keys()                 # long-lived processes
    return dict(
        cpu_ms=(total(after, "ticks") - total(before, "ticks")) * TICK_MS,
        live_us=sum(after[p]["run_ns"] - before[p]["run_ns"] for p in both) / 1000,
        vcsw=sum(after[p]["vcsw"] - before[p]["vcsw"] for p in both),
        rss=total(after, "rss"), pss=total(after, "pss"), procs=len(after))


def new_records(p):
    with open(p.results, "rb") as f:
        f.seek(p.offset)
        data = f.read()
    end = data.rfind(b"\n") + 1                         # complete lines only
    p.offset += end
    return [int(line.split()[0]) for line in data[:end].splitlines()]


def drop_and_wait(p, ino, timeout):
    """One drop; returns t1 - t0 in ns, or None if the watcher missed it."""
    p.extra += len(new_records(p))                      # stray late/duplicate runs
    tmp = p.marker + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"staged_by": "bench"}\n')
    t0 = time.time_ns()                                 # CLOCK_REALTIME
    os.rename(tmp, p.marker)
    t1, gone = None, False
    deadline = time.monotonic() + timeout
    while True:
        for t in new_records(p):
            if t1 is None and t >= t0:
                t1 = t
            else:
                p.extra += 1
        gone = not os.path.exists(p.marker)
        left = deadline - time.monotonic()
        if (t1 is not None and gone) or left <= 0 or not p.alive():
            break
        ino.wait(min(left, 0.25))
    if not gone:                                        # clean up for the next drop
        try:
            os.unlink(p.marker)
        except FileNotFoundError:
            pass
        if t1 is not None:
            p.stuck += 1
    if t1 is None:
        p.miss += 1
        return None
    return t1 - t0


def start(p):
    os.makedirs(p.dir)
    open(p.results, "w").close()
    log = open(os.path.join(p.work, "watcher.log"), "w")
    p.proc = subprocess.Popen(["bash", "-c", p.cmd], cwd=p.work, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(p):
    if p.proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):        # SIGKILL catches leftovers
        try:
            os.killpg(p.proc.pid, sig)                  # group id = the pid we started
        except ProcessLookupError:
            break
        try:
            p.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.1)


def log_tail(p):
    try:
        return read(os.path.join(p.work, "watcher.log")).strip().splitlines()[-1][:120]
    except (OSError, IndexError):
        return ""


def pct(v, q):
    return v[max(0, math.ceil(q * len(v)) - 1)]


def report(peers, args):
    cols = ["peer", "n", "miss", "p50", "p90", "p99", "max", "mean",
            "RSS KiB", "PSS KiB", "procs", "idle CPU ms", "idle CPU us*", "idle vol-cs"]
    rows = []
    for p in peers:
        v = sorted(s / 1000 for s in p.samples)
        lat = ["-"] * 5
        if v:
            lat = [f"{x:.0f}" for x in (pct(v, .5), pct(v, .9), pct(v, .99), v[-1],
                                         sum(v) / len(v))]
        i, res = p.idle, ["-"] * 6
        if i:
            res = [str(i["rss"]), str(i["pss"]), str(i["procs"]), f"{i['cpu_ms']:.0f}",
                   f"{i['live_us']:.0f}", str(i["vcsw"])]
        rows.append([p.name, str(len(v)), str(p.miss)] + lat + res)
    cron = 60e6                                          # µs; start is uniform in [0, 60 s)
    rows.append(["cron-1min (analytic)", "-", "-", f"{cron * .5:.0f}", f"{cron * .9:.0f}",
                 f"{cron * .99:.0f}", f"{cron:.0f}", f"{cron * .5:.0f}"] + ["-"] * 6)
    width = [max(len(r[c]) for r in rows + [cols]) for c in range(len(cols))]
    line = lambda r: "  ".join(x.ljust(w) if c == 0 else x.rjust(w)
                               for c, (x, w) in enumerate(zip(r, width)))
    print(line(cols))
    print(line(["-" * w for w in width]))
    for r in rows:
        print(line(r))
    print(f"\nlatency = t1 (stamp's main) - t0 (just before rename), in µs; "
          f"{args.rounds} rounds, {args.warmup} warm-up rounds dropped.")
    print(f"idle = {args.idle:g} s with no events, after the rounds; CPU ms is "
          f"utime+stime(+reaped children) from /proc/PID/stat in {TICK_MS:g} ms ticks;")
    print("*idle CPU us = schedstat run time of long-lived processes only (precise, "
          "misses short-lived children); vol-cs = voluntary context switches of "
          "long-lived processes.")
    for p in peers:
        notes = [p.note] if p.note else []
        if p.extra:
            notes.append(f"{p.extra} extra/late stamp runs")
        if p.stuck:
            notes.append(f"{p.stuck} markers left in place (driver removed them)")
        if notes:
            print(f"note {p.name}: " + "; ".join(notes))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peers", action="append", help="peers file (repeatable)")
    ap.add_argument("--only", help="comma-separated peer names to run")
    ap.add_argument("--bin", required=True, help="dir with stamp and ref-watch")
    ap.add_argument("--scratch", default="/tmp/bench-scratch/run")
    ap.add_argument("-n", "--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument("--settle", type=float, default=1.0, help="pause after start, seconds")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-drop limit, seconds")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    random.seed(args.seed)

    subprocess.run(["rm", "-rf", args.scratch], check=True)
    os.makedirs(args.scratch)
    subs = dict(bin=os.path.abspath(args.bin), bench=here,
                stamp=os.path.join(os.path.abspath(args.bin), "stamp"),
                syslog=os.path.join(args.scratch, "syslog.sock"))
    start_syslog_sink(subs["syslog"])
    only = set(args.only.split(",")) if args.only else None
    peers = load_peers(args.peers or [os.path.join(here, "peers.conf")], only,
                       args.scratch, subs)
    if not peers:
        sys.exit("no peers selected")

    libc.prctl(36, 1)               # PR_SET_CHILD_SUBREAPER: we reap watchers' orphans
    print(f"# {os.uname().release}, {os.cpu_count()} CPUs, loadavg "
          f"{read('/proc/loadavg').split()[:3]} at start", flush=True)
    ino = Inotify()
    try:
        for p in peers:
            start(p)
            ino.watch(p.results, IN_MODIFY)
            ino.watch(p.dir, IN_DELETE)
        time.sleep(args.settle)
        for p in peers:
            if not p.alive():
                p.note = f"exited at start (rc {p.proc.returncode}): {log_tail(p)}"

        total = args.warmup + args.rounds
        for r in range(total):
            order = [p for p in peers if p.alive()]
            random.shuffle(order)
            for p in order:
                time.sleep(random.uniform(*p.gap) / 1000)
                lat = drop_and_wait(p, ino, args.timeout)
                if r >= args.warmup and lat is not None:
                    p.samples.append(lat)
            if r == args.warmup - 1:                    # warm-up over: forget its misses
                for p in peers:
                    p.miss = p.extra = p.stuck = 0
            if (r + 1) % 50 == 0:
                print(f"# round {r + 1}/{total}", file=sys.stderr, flush=True)
        for p in peers:
            if p.proc.poll() is not None and not p.note:
                p.note = f"died during the run (rc {p.proc.returncode}): {log_tail(p)}"

        time.sleep(args.settle)                         # let the last commands finish
        live = [p for p in peers if p.alive()]
        before = {p.name: snapshot(p.proc.pid) for p in live}
        time.sleep(args.idle)
        for p in live:
            if p.alive():
                p.idle = idle_figures(before[p.name], snapshot(p.proc.pid))
        print(f"# loadavg {read('/proc/loadavg').split()[:3]} at end", flush=True)
    finally:
        for p in peers:
            stop(p)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass

    with open(os.path.join(args.scratch, "samples.csv"), "w") as f:
        f.write("peer,latency_ns\n")
        for p in peers:
            f.writelines(f"{p.name},{s}\n" for s in p.samples)
    report(peers, args)


if __name__ == "__main__":
    main()
