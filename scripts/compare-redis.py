#!/usr/bin/env python3
"""A chain of redis-server processes timed like `am-node bench chain --processes`.

The root and HOPS replicas, each its own redis-server process, replica k a replica of
replica k-1 (chained replication: `replicaof`), no persistence (`--save "" --appendonly
no`). Keyspace notifications are on at every depth; a client subscribed to the key's
channel at each depth (depth 0: a second client of the root, the reference row) sees each
write. The writer SETs the key at the root; per depth, the time from the SET sent to the
notification received, over N flips after a warm-up. Printed in the table shape of
`am-node bench chain --processes` (a row per depth, `ack` for the SET's reply).

Python 3.11, standard library only: RESP over plain sockets, one thread, `selectors`
waiting on every subscriber at once (as the am-node bench's one-thread runtime waits on its
mirrors). Every redis-server it starts is killed when it ends, also on failure or Ctrl-C.

    scripts/compare-redis.py [--hops 3] [--flips 2000] [--warmup 200] [--redis-server PATH]

With --timer AM_NODE the writes are timed by `AM_NODE bench redis-chain` instead (Rust,
the client that times am-node's chain), so both tables share a client.
scripts/compare-redis.sh installs redis, runs this and then am-node's bench the same way.
"""

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

KEY = b"flip"
CHANNEL = b"__keyspace@0__:" + KEY
READY_TIMEOUT = 30.0
CHANGE_TIMEOUT = 10.0
MAX_REPLY = 1 << 20


class RespError(Exception):
    pass


def encode(*parts):
    """A RESP command: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def parse(buf, pos=0):
    """One RESP value from buf at pos: (value, next pos), or None when incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    nxt = end + 2
    if kind in (b"+", b":"):
        return line, nxt
    if kind == b"-":
        return RespError(line.decode(errors="replace")), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if n > MAX_REPLY:
            raise RespError("a bulk string of %d bytes" % n)
        if len(buf) < nxt + n + 2:
            return None
        return buf[nxt:nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        items = []
        for _ in range(max(n, 0)):
            got = parse(buf, nxt)
            if got is None:
                return None
            item, nxt = got
            items.append(item)
        return items, nxt
    raise RespError("unexpected RESP type %r" % kind)


class Conn:
    """A RESP connection with its own read buffer."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *parts):
        self.sock.sendall(encode(*parts))

    def take(self):
        """A complete value already buffered, or None."""
        got = parse(self.buf)
        if got is None:
            return None
        value, used = got
        self.buf = self.buf[used:]
        return value

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data
        if len(self.buf) > MAX_REPLY:
            raise RespError("more than %d bytes unread" % MAX_REPLY)

    def read(self):
        while True:
            value = self.take()
            if value is not None:
                return value
            self.fill()

    def call(self, *parts):
        self.send(*parts)
        value = self.read()
        if isinstance(value, RespError):
            raise value
        return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=READY_TIMEOUT):
    """Retries check() until it is true; fails after timeout."""
    deadline = time.monotonic() + timeout
    error = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, RespError) as e:
            error = e
        time.sleep(0.02)
    raise SystemExit("%s not ready within %ss (%s)" % (what, timeout, error))


def percentiles(samples):
    """p50, p99, max in microseconds, picked as am-node's bench picks them."""
    s = sorted(samples)
    at = lambda q: s[round((len(s) - 1) * q)] / 1000.0
    return {"p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hops", type=int, default=3, help="replicas after the root (1-16)")
    ap.add_argument("--flips", type=int, default=2000, help="measured writes")
    ap.add_argument("--warmup", type=int, default=200, help="writes before measuring")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--json", action="store_true", help="also print a JSON line")
    ap.add_argument("--timer", metavar="AM_NODE",
                    help="time with `AM_NODE bench redis-chain` (Rust, the same client as "
                         "am-node's chain bench) instead of this script's Python client")
    args = ap.parse_args()
    if not 1 <= args.hops <= 16:
        raise SystemExit("--hops must be 1 to 16")
    if not 1 <= args.flips <= 10_000_000 or not 0 <= args.warmup <= 10_000_000:
        raise SystemExit("--flips must be 1 to 10000000, --warmup 0 to 10000000")

    work = tempfile.mkdtemp(prefix="am-redis-chain-")
    servers = []

    def stop(*_):
        for p in servers:
            if p.poll() is None:
                p.kill()
        for p in servers:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    # SIGTERM ends the run like Ctrl-C: through `finally`, which kills the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ports = []
        for k in range(args.hops + 1):
            port = free_port()
            cmd = [args.redis_server, "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--daemonize", "no",
                   "--dir", work, "--dbfilename", "depth%d.rdb" % k,
                   "--notify-keyspace-events", "K$", "--loglevel", "warning"]
            if k > 0:
                cmd += ["--replicaof", "127.0.0.1", str(ports[-1])]
            log = open(os.path.join(work, "depth%d.log" % k), "wb")
            servers.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT))
            ports.append(port)

            def up(port=port, k=k):
                if servers[k].poll() is not None:
                    raise SystemExit("redis-server at depth %d exited; see its log:\n%s" % (
                        k, open(os.path.join(work, "depth%d.log" % k), "rb").read()[-2000:]
                        .decode(errors="replace")))
                c = Conn(port, timeout=1.0)
                try:
                    info = c.call("INFO", "replication")
                finally:
                    c.sock.close()
                return k == 0 or b"master_link_status:up" in info

            wait_until("redis-server at depth %d (port %d)" % (k, port), up)

        if args.timer:
            # The same program and runtime that time am-node's chain: the two tables then
            # differ only in what they time, not in the client that times it.
            cmd = [args.timer, "bench", "redis-chain", "--ports", ",".join(map(str, ports)),
                   "--iterations", str(args.flips), "--warmup", str(args.warmup)]
            if args.json:
                cmd.append("--json")
            sys.stdout.flush()
            code = subprocess.run(cmd).returncode
            if code != 0:
                raise SystemExit("%s exited with %d" % (" ".join(cmd), code))
            return

        writer = Conn(ports[0])
        subscribers = []
        for port in ports:
            c = Conn(port)
            reply = c.call("SUBSCRIBE", CHANNEL)
            if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                raise SystemExit("SUBSCRIBE answered %r" % (reply,))
            c.sock.setblocking(False)
            subscribers.append(c)
        # The writer's reply and every notification are read as they come, in one loop: each
        # is timed when it is read, whichever comes first.
        writer.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(writer.sock, selectors.EVENT_READ, -1)
        for depth, c in enumerate(subscribers):
            sel.register(c.sock, selectors.EVENT_READ, depth)

        def flip(value):
            """One SET at the root: its send time, reply time and arrival per depth (ns)."""
            arrived = [None] * len(subscribers)
            acked = None
            started = time.perf_counter_ns()
            writer.send("SET", KEY, value)
            deadline = time.monotonic() + CHANGE_TIMEOUT
            while acked is None or None in arrived:
                if time.monotonic() > deadline:
                    missing = [d for d, a in enumerate(arrived) if a is None]
                    raise SystemExit("write %s: depths %s never saw it (acked: %s)" % (
                        value, missing, acked is not None))
                for key, _ in sel.select(timeout=0.5):
                    c = writer if key.data < 0 else subscribers[key.data]
                    try:
                        c.fill()
                    except BlockingIOError:
                        continue
                    now = time.perf_counter_ns()
                    while (msg := c.take()) is not None:
                        if key.data < 0:
                            if isinstance(msg, RespError):
                                raise msg
                            acked = now
                        elif isinstance(msg, list) and msg[:1] == [b"message"]:
                            if arrived[key.data] is None:
                                arrived[key.data] = now
            return started, acked, arrived

        # The chain is linked when a first write reached every depth.
        flip("0")
        total = args.warmup + args.flips
        samples = [[] for _ in subscribers]
        acks = []
        for i in range(total):
            started, acked, arrived = flip(str(i % 2))
            if i >= args.warmup:
                acks.append(acked - started)
                for depth, at in enumerate(arrived):
                    samples[depth].append(at - started)

        rows = [percentiles(s) for s in samples]
        ref = rows[0]["p50_us"]
        print("%-11s %5s %9s %9s %9s %12s" % ("scenario", "depth", "p50 us", "p99 us",
                                              "max us", "per-hop p50"))
        for depth, r in enumerate(rows):
            per_hop = "-" if depth == 0 else "%.1f" % ((r["p50_us"] - ref) / depth)
            print("%-11s %5d %9.1f %9.1f %9.1f %12s" % ("redis", depth, r["p50_us"],
                                                      r["p99_us"], r["max_us"], per_hop))
        ack = percentiles(acks)
        print("%-11s %5d %9.1f %9.1f %9.1f %12s" % ("ack", 0, ack["p50_us"], ack["p99_us"],
                                                  ack["max_us"], "-"))
        print("(%d redis-server processes; depth 0 is a client of the root; per-hop = "
              "(p50 - depth 0's p50) / depth)" % len(ports))
        if args.json:
            print(json.dumps({"scenario": "redis-chain", "processes": len(ports),
                              "flips": args.flips, "propagation": rows, "ack": ack}))
    finally:
        stop()


if __name__ == "__main__":
    main()
