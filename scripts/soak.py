#!/usr/bin/env python3
"""Soak a tree of real am-node processes: root <- a <- b <- c, one process per node.

Under continuous mutations at the root (states flipped) and from the leaf (a multi state
added through c, a, b up to the root), the interior nodes a and b are killed with SIGKILL and
restarted again and again, and between kills the links root <- a and a <- b, which run
through `am-node fault-proxy`, are cut, stalled, delayed or reset for a moment. When the time is up the load stops, and the soak checks that
  - every node's clock equals the root's within --settle-timeout (the time it took is reported),
  - the root ran the leaf's multi state exactly once per mutation the leaf was told Executed:
    the leaf's `am-node add` and every node's mirror retry across the kills and faults with
    the mutation's key, and each hop answers a repeat from its record (PROTOCOL.md, "Retries
    and exactly once"). Only an add that gave up (its --timeout passed with the link down) may
    or may not have run, so with G given up: executed <= root runs <= executed + G.
Prints one summary line (also as JSON with --json) and exits 1 when a check fails.

    scripts/soak.py --binary target/release/am-node --seconds 300
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

NODES = ["root", "a", "b", "c"]
INTERIOR = ["a", "b"]

TOPOLOGY = """
[schemas.soak]
states = [
  {{ name = "A" }},
  {{ name = "B" }},
  {{ name = "C" }},
  {{ name = "Op", multi = true }},
]

[[nodes]]
name = "root"
listen = ["tcp://127.0.0.1:{root}"]
machines = [{{ name = "soak", schema = "soak" }}]

[[nodes]]
name = "a"
listen = ["tcp://127.0.0.1:{a}"]
machines = [{{ name = "soak", schema = "soak", upstream = "tcp://{root_link}/soak" }}]

[[nodes]]
name = "b"
listen = ["tcp://127.0.0.1:{b}"]
machines = [{{ name = "soak", schema = "soak", upstream = "tcp://{a_link}/soak" }}]

[[nodes]]
name = "c"
listen = ["tcp://127.0.0.1:{c}"]
machines = [{{ name = "soak", upstream = "b" }}]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """`am-node fault-proxy`: forwards to a port, faults on command."""

    def __init__(self, binary, port):
        self.proc = subprocess.Popen(
            [binary, "fault-proxy", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addr = self.proc.stdout.readline().strip()
        if not self.addr:
            raise RuntimeError("am-node fault-proxy did not start")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Tree:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.ports = {name: free_port() for name in NODES}
        # The links into a and b go through fault proxies.
        self.links = {up: FaultProxy(binary, self.ports[up]) for up in ["root", "a"]}
        self.topology = os.path.join(workdir, "soak.toml")
        with open(self.topology, "w") as f:
            f.write(
                TOPOLOGY.format(
                    root_link=self.links["root"].addr, a_link=self.links["a"].addr, **self.ports
                )
            )
        self.procs = {}

    def endpoint(self, node):
        return f"tcp://127.0.0.1:{self.ports[node]}/soak"

    def start(self, node):
        log = open(os.path.join(self.workdir, f"{node}.log"), "a")
        self.procs[node] = subprocess.Popen(
            [self.binary, "run", self.topology, "--node", node, "--report-ms", "0"],
            stdout=log,
            stderr=log,
        )

    def kill(self, node):
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self):
        for node in list(self.procs):
            self.kill(node)
        for link in self.links.values():
            link.close()

    def status(self, node):
        """The node's one source as the status tool reports it, or None while it is down."""
        try:
            out = subprocess.run(
                [self.binary, "status", f"tcp://127.0.0.1:{self.ports[node]}", "--json"],
                capture_output=True,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)["sources"][0]

    def mutate(self, node, verb, state, timeout=15):
        try:
            # The command waits for an unreachable node up to its own --timeout, under ours.
            return subprocess.run(
                [self.binary, verb, self.endpoint(node), state, "--timeout", "8s"],
                capture_output=True,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            return None


def wait_for(what, timeout, check, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def run(args):
    workdir = tempfile.mkdtemp(prefix="am-soak-")
    tree = Tree(args.binary, workdir)
    stop = threading.Event()
    counts = {"executed": 0, "not_executed": 0, "root_mutations": 0}
    ok = False
    try:
        for node in NODES:
            tree.start(node)
        leaf_ready = lambda: (tree.status("c") or {}).get("connection") == "ready"
        wait_for("the leaf to reach the root", 30, leaf_ready)

        def root_load():
            i = 0
            while not stop.is_set():
                state = "ABC"[i % 3]
                verb = "add" if (i // 3) % 2 == 0 else "remove"
                if tree.mutate("root", verb, state) == 0:
                    counts["root_mutations"] += 1
                i += 1

        def leaf_load():
            while not stop.is_set():
                if tree.mutate("c", "add", "Op") == 0:
                    counts["executed"] += 1
                else:
                    counts["not_executed"] += 1
                    time.sleep(0.02)

        loads = [threading.Thread(target=root_load), threading.Thread(target=leaf_load)]
        for t in loads:
            t.start()

        kills = 0
        faults = {}
        started = time.monotonic()
        interval = args.seconds / args.kills
        while kills < args.kills or time.monotonic() - started < args.seconds:
            time.sleep(interval * random.uniform(0.5, 1.0))
            victim = INTERIOR[kills % len(INTERIOR)]
            tree.kill(victim)
            time.sleep(random.uniform(0.05, min(0.5, interval / 2)))
            tree.start(victim)
            kills += 1
            # A fault on one link, held for a moment, then the link is healthy again.
            fault = random.choice(["cut", "stall", "delay 20", "reset"])
            link = random.choice(list(tree.links.values()))
            link.command(fault)
            time.sleep(random.uniform(0.1, min(1.0, interval / 2)))
            link.command("pass")
            faults[fault] = faults.get(fault, 0) + 1

        stop.set()
        for t in loads:
            t.join()
        load_stopped = time.monotonic()

        def converged():
            statuses = [tree.status(n) for n in NODES]
            if any(s is None for s in statuses):
                return False
            root = statuses[0]["ticks"]
            return all(s["ticks"] == root for s in statuses[1:]) and all(
                s.get("connection") == "ready" for s in statuses[1:]
            )

        wait_for("every node to equal the root", args.settle_timeout, converged)
        settle = time.monotonic() - load_stopped
        root = tree.status("root")
        # Op is multi and never removed: the first add takes its tick to 1, each later add
        # adds 2, so N adds leave 2N - 1.
        root_ops = (root["ticks"][3] + 1) // 2
        executed, given_up = counts["executed"], counts["not_executed"]
        ok = executed <= root_ops <= executed + given_up
        summary = {
            "seconds": round(time.monotonic() - started, 1),
            "kills": kills,
            "link_faults": faults,
            "leaf_executed": counts["executed"],
            "leaf_not_executed": counts["not_executed"],
            "root_ran_leaf_ops": root_ops,
            "root_mutations": counts["root_mutations"],
            "settle_ms": round(settle * 1000),
            "ok": ok,
        }
        if args.json:
            print(json.dumps(summary))
        else:
            print(
                f"soak: {summary['seconds']} s, {kills} kills of interior nodes, link faults "
                f"{faults}; leaf Executed "
                f"{counts['executed']} (not: {counts['not_executed']}), the root ran "
                f"{root_ops}; {counts['root_mutations']} root mutations; every node equal "
                f"to the root {summary['settle_ms']} ms after the load stopped"
            )
        if not ok:
            print(
                f"soak FAILED: the leaf saw {executed} Executed ({given_up} given up) but the "
                f"root ran {root_ops}: a mutation was lost or ran twice; logs in {workdir}",
                file=sys.stderr,
            )
        return 0 if ok else 1
    except TimeoutError as e:
        print(f"soak FAILED: {e}; logs in {workdir}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        tree.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="the am-node executable")
    p.add_argument("--seconds", type=float, default=120, help="how long to soak")
    p.add_argument("--kills", type=int, default=20, help="at least this many kills")
    p.add_argument("--settle-timeout", type=float, default=30)
    p.add_argument("--json", action="store_true")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
