#!/usr/bin/env python3
"""Driver of ops/chaos: the fault-injection campaign. Run it through ops/chaos (whose header is the help text).

Every scenario gets a fresh database in one throwaway PostgreSQL cluster, a fresh coordinator data dir and fresh
processes (a coordinator and 3 workers), runs a fixed job set while it injects its faults, and then compares what
each job left behind — result JSON, shard summaries, every stored blob's SHA-256, every metric row — byte for
byte with the fault-free baseline run of the same set. Python standard library only.
"""

import argparse
import collections
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
LEASE_SECONDS = 15.0  # the coordinator's lease (not a flag): docs/operations.md "What happens when things fail"
HEARTBEAT = 0.5       # --heartbeat of coordinator and workers; liveness stays at its default 3 (lost after 1.5 s)
WORKERS = 3


def say(msg):
    print(f"ops/chaos: {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    """A scenario failed; the message says why."""


class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # The daemons die with this driver even if it is SIGKILLed (PR_SET_PDEATHSIG = 1).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- job sets ---------------------------------------------------------------------------------------------------
# (key, example file, --set overrides). Keys name a job across runs; job ids differ between databases.

def main_set(quick):
    """The job set of every scenario but kill-all. --quick runs fewer, shorter jobs of the same kinds."""
    if quick:
        return [
            ("ddim-ring-keep", "sampling-ddim-ring.yaml",
             ["params.samples=16384", "params.sampling_steps=50", "params.keep_samples=true"]),
            ("rloo-ckpt", "rl-rloo-toy.yaml", ["params.steps=800", "checkpoint_every=200"]),
            ("dpo-ckpt", "pref-dpo-toy.yaml", ["params.steps=400", "checkpoint_every=100", "params.data.pairs=16384"]),
            ("grpo-sweep", "rl-grpo-toy.yaml", ["params.steps=400", "checkpoint_every=100"]),
            ("noop-stream", "noop.yaml",
             ["shards=6", "params.metrics=5000", "params.result_bytes=200000", "params.sleep_ms=800"]),
            ("noop-rounds", "noop.yaml",
             ["name=noop-rounds", "kind=rl", "shards=6", "params.rounds=3", "params.sleep_ms=300",
              "params.result_bytes=5000", "params.metrics=100"]),
        ]
    return [
        ("ddim-ring-keep", "sampling-ddim-ring.yaml",
         ["params.samples=65536", "params.sampling_steps=50", "params.keep_samples=true"]),
        ("rloo-ckpt", "rl-rloo-toy.yaml", ["params.steps=2000", "checkpoint_every=250"]),
        ("dpo-ckpt", "pref-dpo-toy.yaml", ["params.steps=1000", "checkpoint_every=100", "params.data.pairs=65536"]),
        ("grpo-sweep", "rl-grpo-toy.yaml", ["params.steps=1000", "checkpoint_every=200"]),
        ("mala", "sampling-langevin-mala.yaml", ["params.samples=20000"]),
        ("noop-stream", "noop.yaml",
         ["shards=6", "params.metrics=20000", "params.result_bytes=200000", "params.sleep_ms=1500"]),
        ("ppo-ckpt", "rl-ppo-toy.yaml", ["params.steps=500", "checkpoint_every=100"]),
        ("ddpm-train", "sampling-ddpm-train.yaml",
         ["params.steps=500", "checkpoint_every=100", "params.eval_samples=4096", "params.eval_every=250"]),
        ("noop-rounds", "noop.yaml",
         ["name=noop-rounds", "kind=rl", "shards=6", "params.rounds=3", "params.sleep_ms=800",
          "params.result_bytes=5000", "params.metrics=100"]),
    ]


def queue_set(n):
    """n small jobs of five kinds, each with its own seed."""
    jobs = []
    for i in range(n):
        seed = f"seed={100 + i}"
        kind = i % 5
        if kind == 0:
            jobs.append((f"q{i:02d}-noop", "noop.yaml",
                         [seed, f"name=q{i}", "shards=2", "params.metrics=500", "params.result_bytes=20000",
                          "params.sleep_ms=200"]))
        elif kind == 1:
            jobs.append((f"q{i:02d}-ddim", "sampling-ddim-ring.yaml",
                         [seed, f"name=q{i}", "shards=1", "params.samples=4096", "params.sampling_steps=10",
                          "params.keep_samples=true"]))
        elif kind == 2:
            jobs.append((f"q{i:02d}-rloo", "rl-rloo-toy.yaml",
                         [seed, f"name=q{i}", "params.steps=150", "checkpoint_every=50"]))
        elif kind == 3:
            jobs.append((f"q{i:02d}-dpo", "pref-dpo-toy.yaml",
                         [seed, f"name=q{i}", "params.steps=150", "checkpoint_every=50", "params.data.pairs=4096"]))
        else:
            jobs.append((f"q{i:02d}-mala", "sampling-langevin-mala.yaml",
                         [seed, f"name=q{i}", "shards=1", "params.samples=4096", "params.steps=50"]))
    return jobs


# --- PostgreSQL -------------------------------------------------------------------------------------------------

class Postgres:
    def __init__(self, dir):
        self.dir = dir
        self.url = None
        self.bindir = subprocess.run(["bash", "-c", f". '{ROOT}/ops/lib.sh'; pg_bindir"], check=True,
                                     capture_output=True, text=True).stdout.strip()

    def start(self):
        # --durable: PostgreSQL's default durability (fsync, synchronous_commit, full_page_writes on).
        r = subprocess.run([f"{ROOT}/ops/pg", "start", self.dir, "--durable"], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise Fail(f"ops/pg start failed: {r.stderr.strip()}")
        self.url = r.stdout.strip()

    def pg_ctl(self, *args, timeout=90):
        cmd = [f"{self.bindir}/pg_ctl", "-D", f"{self.dir}/data", *args]
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def restart(self, mode):
        # pg_ctl restart reuses the options of the running server (postmaster.opts): socket only, same port.
        r = self.pg_ctl("-l", f"{self.dir}/server.log", "-m", mode, "-w", "-t", "60", "restart")
        if r.returncode != 0:
            raise Fail(f"pg_ctl restart -m {mode} failed: {r.stdout.strip()} {r.stderr.strip()}")

    def stop(self, destroy):
        if not os.path.isdir(self.dir):
            return
        subprocess.run([f"{ROOT}/ops/pg", "destroy" if destroy else "stop", self.dir], capture_output=True,
                       timeout=120)

    def db_url(self, db):
        p = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(p._replace(path="/" + db))


def psql(url, query, timeout=30):
    """Rows of a query as lists of strings. Raises Fail on any error. Fields and rows are separated by ASCII unit
    and record separators, so text with tabs or newlines (a job's error) stays in its field."""
    try:
        r = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\x1f", "-R", "\x1e", "-v", "ON_ERROR_STOP=1",
                            "-d", url, "-c", query], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail(f"psql timed out: {query[:80]}")
    if r.returncode != 0:
        raise Fail(f"psql failed ({r.stderr.strip()}): {query[:80]}")
    return [rec.split("\x1f") for rec in r.stdout.rstrip("\n").split("\x1e") if rec != ""]


# --- network namespaces: the links a partition scenario cuts -----------------------------------------------------

CLONE_NEWNET = 0x40000000
NET_PREFIX = f"tsrc-{os.getpid()}-"  # every namespace this driver creates; ops/chaos removes leftovers by it


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise Fail(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def netns_unavailable():
    """Why network namespaces cannot be made here, or None when they can."""
    if os.getuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is missing"
    probe = NET_PREFIX + "probe"
    r = ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create network namespaces here (ip netns add: {r.stderr.strip()})"
    ip("netns", "del", probe, check=False)
    return None


class Net:
    """A hub namespace (the coordinator, the CLI, a bridge at 10.232.0.1) and one namespace per worker, each joined
    to the bridge by a veth pair whose hub end is h-NAME: `ip link set h-NAME down` cuts that worker off. Nothing
    of it touches the root namespace; PostgreSQL is reached over its unix socket from every namespace."""
    HUB_ADDR = "10.232.0.1"

    def __init__(self, tag, workers):
        self.hub = f"{NET_PREFIX}{tag}-hub"
        self.ns = {w: f"{NET_PREFIX}{tag}-{w}" for w in workers}
        self.made = []  # namespaces created, removed by destroy() even when create() failed half-way

    def create(self):
        workers = list(self.ns)
        ip("netns", "add", self.hub)
        self.made.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{self.HUB_ADDR}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, w in enumerate(workers):
            ns = self.ns[w]
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.hub, "link", "add", self.link(w), "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", self.link(w), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"10.232.0.{11 + i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    @staticmethod
    def link(w):
        return f"h-{w}"

    def cut(self, w):
        ip("-n", self.hub, "link", "set", self.link(w), "down")

    def restore(self, w):
        ip("-n", self.hub, "link", "set", self.link(w), "up")

    def destroy(self):
        # The veth pairs and the bridge go with their namespaces (their processes are gone by now).
        while self.made:
            ip("netns", "del", self.made.pop(), check=False)


def in_netns(ns):
    """A preexec_fn that moves the child into network namespace `ns` (and ties it to this driver's life)."""
    path = f"/run/netns/{ns}"

    def setup():
        _child_setup()
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {path}")
        finally:
            os.close(fd)
    return setup


# --- one cluster: coordinator + workers on a fresh database -----------------------------------------------------

class Cluster:
    def __init__(self, campaign, name, netns=False):
        self.campaign = campaign
        self.bin = campaign.bin
        self.name = name
        self.dir = os.path.join(campaign.work, name)
        os.makedirs(self.dir)
        self.data = os.path.join(self.dir, "data")
        db = self.db = "chaos_" + name.replace("-", "_")
        psql(campaign.pg.url, f"CREATE DATABASE {db}")
        self.url = campaign.pg.db_url(db)
        r = subprocess.run([self.bin, "migrate", "--database-url", self.url], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise Fail(f"tessera migrate failed: {r.stderr.strip()}")
        # With netns, the coordinator and the CLI run in a hub namespace and each worker in its own, joined by links
        # that can be cut (Net); a coordinator off loopback needs CURVE keys, so every peer gets one.
        self.net = None
        self.keys = campaign.keys() if netns else None
        self.port = 5555 if netns else free_port()
        self.endpoint = f"tcp://{Net.HUB_ADDR if netns else '127.0.0.1'}:{self.port}"
        # What workers and the CLI are given: the coordinator, or it and a standby (add_standby).
        self.client_endpoint = self.endpoint
        self.procs = {}            # name -> Popen of the current process
        self.expected_dead = set() # names we killed and have not restarted
        self.starts = collections.Counter()
        self.env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        campaign.clusters.append(self)
        if netns:
            self.net = Net(f"c{len(campaign.clusters)}", self.worker_names())
            self.net.create()

    def log_path(self, name):
        return os.path.join(self.dir, f"{name}.log")

    def log_tail(self, name, lines=15):
        try:
            with open(self.log_path(name), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _preexec(self, name):
        """The child setup of a daemon (or of the CLI, name None): in its namespace when the cluster has them."""
        if self.net is None:
            return _child_setup
        return in_netns(self.net.ns.get(name, self.net.hub))

    def _keys(self, name):
        return ["--keys-dir", os.path.join(self.keys, name)] if self.keys else []

    def _spawn(self, name, args):
        with open(self.log_path(name), "ab") as log:
            log.write(f"=== ops/chaos: start #{self.starts[name] + 1} of {name} at {time.strftime('%H:%M:%S')}\n"
                      .encode())
            log.flush()
            p = subprocess.Popen([self.bin, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=self._preexec(name), env=self.env)
        self.procs[name] = p
        self.starts[name] += 1
        self.expected_dead.discard(name)
        return p

    def start_coordinator(self, timeout=30):
        ep_file = os.path.join(self.dir, "endpoint")
        if os.path.exists(ep_file):
            os.unlink(ep_file)
        p = self._spawn("coordinator", [
            "coordinator", "--database-url", self.url, "--bind", self.endpoint, "--data-dir", self.data,
            "--endpoint-file", ep_file, "--heartbeat", str(HEARTBEAT), "--log-level", "info",
            *self._keys("coordinator")])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(ep_file) and open(ep_file).read().strip():
                return
            if p.poll() is not None:
                raise Fail(f"coordinator exited with {p.returncode} at start:\n{self.log_tail('coordinator')}")
            time.sleep(0.02)
        raise Fail(f"coordinator did not listen within {timeout} s:\n{self.log_tail('coordinator')}")

    def add_standby(self, timeout=30):
        """A second coordinator on the same database and its own port: it waits on the advisory lock, binding
        nothing, and takes over when the active one dies. Workers and the CLI get both endpoints."""
        self.standby_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.client_endpoint = f"{self.endpoint},{self.standby_endpoint}"
        self._spawn("standby", [
            "coordinator", "--database-url", self.url, "--bind", self.standby_endpoint, "--data-dir", self.data,
            "--endpoint-file", os.path.join(self.dir, "standby-endpoint"), "--heartbeat", str(HEARTBEAT),
            "--log-level", "info"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_processes()
            if "standby" in self.log_tail("standby", 50):
                return
            time.sleep(0.05)
        raise Fail(f"the standby coordinator did not say it is waiting within {timeout} s:\n{self.log_tail('standby')}")

    def worker_names(self):
        return [f"w{i + 1}" for i in range(WORKERS)]

    def start_worker(self, name):
        self._spawn(name, ["worker", "--coordinator", self.client_endpoint, "--name", name, "--heartbeat", str(HEARTBEAT),
                           "--drain-timeout", "2", "--log-level", "info", *self._keys(name)])

    def start(self):
        self.start_coordinator()
        for w in self.worker_names():
            self.start_worker(w)
        self.wait_workers_alive()

    def wait_workers_alive(self, timeout=30):
        deadline = time.monotonic() + timeout
        names = set(self.worker_names())
        while time.monotonic() < deadline:
            self.check_processes()
            rows = self.sql_retry("SELECT DISTINCT name FROM tessera_workers WHERE state = 'alive'", deadline)
            if names <= {r[0] for r in rows}:
                return
            time.sleep(0.1)
        raise Fail(f"workers {sorted(names)} not all alive within {timeout} s")

    def signal(self, name, sig):
        p = self.procs[name]
        p.send_signal(sig)
        if sig == signal.SIGKILL:
            self.expected_dead.add(name)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise Fail(f"{name} (pid {p.pid}) did not die within 10 s of SIGKILL")

    def check_processes(self):
        """Fails if a daemon we did not kill has exited."""
        for name, p in self.procs.items():
            if name not in self.expected_dead and p.poll() is not None:
                raise Fail(f"{name} (pid {p.pid}) exited on its own with status {p.returncode}; log tail:\n"
                           f"{self.log_tail(name)}")

    def sql(self, query, timeout=30):
        return psql(self.url, query, timeout)

    def sql_retry(self, query, deadline):
        """A query that may meet a PostgreSQL restart: retried until the deadline."""
        while True:
            try:
                return self.sql(query, timeout=10)
            except Fail as e:
                if time.monotonic() > deadline:
                    raise Fail(f"database unreachable until the deadline: {e}")
                time.sleep(0.2)

    def cli(self, args, timeout=60, check=True):
        r = subprocess.run([self.bin, *args, "--coordinator", self.client_endpoint, *self._keys("user")],
                           capture_output=True, timeout=timeout, env=self.env, preexec_fn=self._preexec(None))
        if check and r.returncode != 0:
            raise Fail(f"tessera {' '.join(args)} exited {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        return r

    def submit(self, jobs):
        ids = []
        for key, example, sets in jobs:
            args = ["submit", os.path.join(EXAMPLES, example), "--json"]
            for s in sets:
                args += ["--set", s]
            ids.append(json.loads(self.cli(args).stdout)["job_id"])
        return ids

    def leased(self, deadline=None):
        """(worker name, job id, shard idx, attempt) of every leased shard."""
        q = ("SELECT w.name, s.job_id, s.idx, s.attempt FROM tessera_shards s JOIN tessera_workers w "
             "ON w.id = s.worker_id WHERE s.state = 'leased' ORDER BY s.job_id, s.idx")
        rows = self.sql_retry(q, deadline or time.monotonic() + 30)
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def job_states(self, ids, deadline):
        rows = self.sql_retry(f"SELECT id, state, coalesce(error, '') FROM tessera_jobs "
                              f"WHERE id IN ({','.join(map(str, ids))})", deadline)
        return {int(r[0]): (r[1], r[2]) for r in rows}

    def all_done(self, ids, deadline):
        """True once every job is terminal (succeeded, failed or cancelled)."""
        states = self.job_states(ids, deadline)
        return len(states) == len(ids) and all(s in ("succeeded", "failed", "cancelled") for s, _ in states.values())

    def wait_done(self, ids, timeout):
        """Waits until every job is terminal; returns {job id: (state, error)} of those that did not succeed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_processes()
            if self.all_done(ids, deadline):
                states = self.job_states(ids, deadline)
                return {j: s for j, s in states.items() if s[0] != "succeeded"}
            time.sleep(0.2)
        states = self.job_states(ids, time.monotonic() + 10)
        left = {j: s for j, (s, _) in states.items() if s != "succeeded"}
        raise Fail(f"jobs not finished within {timeout} s: {left}")

    def registrations(self):
        """worker name -> READY count (each registration is a worker.ready event and a tessera_workers row)."""
        rows = self.sql("SELECT w.name, count(*) FROM tessera_events e JOIN tessera_workers w ON w.id = e.worker_id "
                        "WHERE e.kind = 'worker.ready' GROUP BY w.name")
        ready = {r[0]: int(r[1]) for r in rows}
        rows = self.sql("SELECT name, count(*) FROM tessera_workers GROUP BY name")
        regs = {r[0]: int(r[1]) for r in rows}
        return {n: max(ready.get(n, 0), regs.get(n, 0)) for n in self.worker_names()}

    def counters(self):
        try:
            return json.loads(self.cli(["workers", "--json"], timeout=20).stdout).get("coordinator", {})
        except (Fail, ValueError, subprocess.TimeoutExpired):
            return {}

    def stale_dropped(self, timeout=10):
        """The coordinator's stale_dropped counter, retried for `timeout` seconds; None if it cannot be read."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.counters().get("stale_dropped")
            if isinstance(v, int):
                return v
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def stop_all(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                    p.send_signal(signal.SIGKILL if name != "coordinator" else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p in self.procs.items():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.expected_dead.add(name)
        if self.net is not None:
            self.net.destroy()


# --- what a job left behind -------------------------------------------------------------------------------------

def capture(cluster, job_id):
    """Everything a finished job left behind that must not depend on faults (attempt numbers and times excluded)."""
    out = {}
    out["result"] = cluster.cli(["result", str(job_id), "--json"]).stdout.decode()
    out["metrics_csv"] = cluster.cli(["metrics", str(job_id), "--csv"], timeout=120).stdout.decode()
    rows = cluster.sql(f"SELECT count(*), count(DISTINCT (shard_idx, name, step)) FROM tessera_metrics "
                       f"WHERE job_id = {job_id}")
    out["metric_rows"], out["metric_distinct"] = int(rows[0][0]), int(rows[0][1])
    blobs, bad_files = [], []
    for shard, kind, step, sha, size, path in cluster.sql(
            f"SELECT shard_idx, kind, step, sha256, size, path FROM tessera_checkpoints WHERE job_id = {job_id} "
            f"ORDER BY shard_idx, kind, step"):
        blobs.append(f"{shard} {kind} {step} {sha} {size}")
        full = os.path.join(cluster.data, path)
        try:
            got = sha256_file(full)
        except OSError as e:
            got = f"unreadable ({e.strerror})"
        if got != sha:
            bad_files.append(f"{path}: {got}")
    out["blobs"] = blobs
    out["bad_files"] = bad_files
    out["shards"] = [" ".join(r) for r in cluster.sql(
        f"SELECT idx, state, coalesce(result_sha256, '-'), coalesce(summary::text, '-') FROM tessera_shards "
        f"WHERE job_id = {job_id} ORDER BY idx")]
    f = cluster.sql(f"SELECT coalesce(sum(failures), 0), max(attempt) FROM tessera_shards WHERE job_id = {job_id}")
    out["failures"], out["max_attempt"] = int(f[0][0]), int(f[0][1])
    return out


RESULT_FIELDS = ("result", "blobs", "shards")
METRIC_FIELDS = ("metrics_csv", "metric_rows")


def expected_noop_rows(example, sets):
    """Metric rows a noop job must store (shards x params.metrics), or None for other algorithms."""
    if example != "noop.yaml":
        return None
    kv = dict(x.split("=", 1) for x in sets)
    return int(kv.get("shards", "1000")) * int(kv.get("params.metrics", "10"))


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"at {i}: {a[max(0, i - 30):i + 50]!r} vs {b[max(0, i - 30):i + 50]!r}"
    return f"lengths {len(a)} vs {len(b)}"


# --- the campaign -----------------------------------------------------------------------------------------------

SCENARIOS = ["worker-kill", "coordinator-kill", "coordinator-failover", "pg-restart-fast", "pg-restart-immediate",
             "worker-sigstop", "partition-8s", "partition-25s", "kill-all"]
FULL_ONLY = {"pg-restart-fast", "partition-25s"}


class Campaign:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.bin = args.bin
        self.work = args.work
        self.pg = Postgres(os.path.join(self.work, "pg"))
        self.clusters = []
        self.rows = []       # table rows
        self.baseline = {}   # key -> capture
        self.baseline_wall = {}
        self.failover = []   # (seconds to a served client request, seconds to every worker back) per failover
        self.n_queue = 10 if self.quick else 50
        self.load0 = os.getloadavg()
        self.t_start = time.monotonic()

    # Runs a job set on a fresh cluster while `inject(cluster, ids, t0)` injects faults; returns the row.
    def scenario(self, name, jobs, inject, describe, planned, extra_checks=None, queue_first=False, standby=False,
                 netns=False):
        say(f"--- scenario {name}: {describe}")
        t_scenario = time.monotonic()
        row = {"scenario": name, "jobs": len(jobs), "faults": 0, "planned": planned, "wall": 0.0,
               "results": "n", "metrics": "n", "failures": "-", "verdict": "FAIL", "why": [], "reregs": {}}
        self.rows.append(row)
        cluster = None
        t0 = None
        try:
            cluster = Cluster(self, name, netns=netns)
            if queue_first:
                # Every job is queued before any worker runs (submitting 50 takes longer than running some).
                cluster.start_coordinator()
                ids = cluster.submit(jobs)
                t0 = time.monotonic()
                for w in cluster.worker_names():
                    cluster.start_worker(w)
            elif standby:
                cluster.start_coordinator()
                cluster.add_standby()
                for w in cluster.worker_names():
                    cluster.start_worker(w)
                cluster.wait_workers_alive()
                t0 = time.monotonic()
                ids = cluster.submit(jobs)
            else:
                cluster.start()
                t0 = time.monotonic()
                ids = cluster.submit(jobs)
            info = inject(cluster, ids, t0, row) or {}
            bad = cluster.wait_done(ids, timeout=self.args.timeout)
            row["wall"] = time.monotonic() - t0
            for (key, _, _), job_id in zip(jobs, ids):
                if job_id in bad:
                    state, error = bad[job_id]
                    row["why"].append(f"{key} (job {job_id}) {state}: {error}")
            if "after" in info:
                info["after"]()
            self.compare(cluster, name, jobs, ids, row, skip=set(bad))
            if extra_checks:
                extra_checks(cluster, row)
        except Fail as e:
            row["why"].append(str(e))
            if row["wall"] == 0.0 and t0 is not None:
                row["wall"] = time.monotonic() - t0
        finally:
            if cluster is not None:
                try:
                    regs = cluster.registrations()
                    row["reregs"] = {w: (regs.get(w, 0), cluster.starts[w]) for w in cluster.worker_names()}
                except Fail:
                    pass
                cluster.stop_all()
        if row["faults"] < planned:
            row["why"].append(f"only {row['faults']} of {planned} faults could be injected (the jobs finished first)")
        row["verdict"] = "PASS" if not row["why"] else "FAIL"
        if cluster is not None and row["verdict"] == "PASS" and not self.args.keep:
            # Fewer files for PostgreSQL's crash recovery to sync in later restarts; a failed one stays for a look.
            try:
                psql(self.pg.url, f"DROP DATABASE IF EXISTS {cluster.db} WITH (FORCE)")
            except Fail:
                pass
        for w in row["why"]:
            say(f"FAIL  {name}: {w}")
        row["elapsed"] = time.monotonic() - t_scenario
        if row["verdict"] == "PASS":
            say(f"PASS  {name}: {len(jobs)} jobs, {row['faults']} faults, {row['wall']:.1f} s "
                f"({row['elapsed']:.0f} s with setup and checks)")
        return row

    def skip(self, name, jobs, planned, why):
        say(f"SKIP  {name}: {why}")
        self.rows.append({"scenario": name, "jobs": jobs, "faults": 0, "planned": planned, "wall": 0.0,
                          "results": "-", "metrics": "-", "failures": "-", "verdict": "SKIP", "why": [why],
                          "reregs": {}})

    def netns_unavailable(self):
        """Why the partition scenarios cannot run here (asked once), or None."""
        if not hasattr(self, "_netns_why"):
            self._netns_why = netns_unavailable()
        return self._netns_why

    def keys(self):
        """CURVE keys of the coordinator, the workers and the CLI ("user"), made once: KEYS/NAME/."""
        keys = os.path.join(self.work, "keys")
        if not os.path.isdir(keys):
            def keygen(*args):
                r = subprocess.run([self.bin, "keygen", *args], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise Fail(f"tessera keygen {' '.join(args)} failed: {r.stderr.strip()}")
            keygen("coordinator", "--keys-dir", os.path.join(keys, "coordinator"))
            for name in [f"w{i + 1}" for i in range(WORKERS)] + ["user"]:
                keygen("client", name, "--keys-dir", os.path.join(keys, name),
                       "--authorize-in", os.path.join(keys, "coordinator"))
        return keys

    def compare(self, cluster, name, jobs, ids, row, skip=()):
        """Compares every succeeded job with the baseline (jobs in `skip` did not succeed: already a FAIL)."""
        why = row["why"]
        res_ok = met_ok = not skip
        for (key, example, sets), job_id in zip(jobs, ids):
            if job_id in skip:
                continue
            got = capture(cluster, job_id)
            want = expected_noop_rows(example, sets)
            if want is not None and got["metric_rows"] != want:
                why.append(f"{key} (job {job_id}): {got['metric_rows']} metric rows stored, the job emits {want}")
                met_ok = False
            if got["bad_files"]:
                why.append(f"{key} (job {job_id}): stored blobs do not hash to their names: {got['bad_files'][:3]}")
                res_ok = False
            if got["metric_rows"] != got["metric_distinct"]:
                why.append(f"{key}: {got['metric_rows']} metric rows but {got['metric_distinct']} distinct")
                met_ok = False
            if name.startswith("baseline"):
                self.baseline[key] = got
                continue
            base = self.baseline[key]
            for field in RESULT_FIELDS + METRIC_FIELDS:
                if got[field] != base[field]:
                    if field in RESULT_FIELDS:
                        res_ok = False
                    else:
                        met_ok = False
                    a, b = got[field], base[field]
                    if isinstance(a, str):
                        detail = first_difference(a, b)
                    elif isinstance(a, list):
                        detail = f"{len(a)} vs {len(b)} entries; first differing: " + next(
                            (f"{x!r} vs {y!r}" for x, y in zip(a, b) if x != y), "(a prefix)")
                    else:
                        detail = f"{a} vs baseline {b}"
                    why.append(f"{key} (job {job_id}, max attempt {got['max_attempt']}): {field} differs from the "
                               f"baseline: {detail}")
        row["results"] = "y" if res_ok else "n"
        row["metrics"] = "y" if met_ok else "n"
        total_failures = int(cluster.sql("SELECT coalesce(sum(failures), 0) FROM tessera_shards")[0][0])
        row["failures"] = total_failures
        if total_failures:
            why.append(f"SUM(failures) = {total_failures} over the shards: infrastructure faults were charged")
        # Each shard succeeded once, each job once: nothing was recorded twice.
        twice = cluster.sql("SELECT job_id, shard_idx, count(*) FROM tessera_events WHERE kind = 'shard.succeeded' "
                            "GROUP BY 1, 2 HAVING count(*) <> 1")
        if twice:
            why.append(f"shards recorded as succeeded more than once: {twice[:5]}")
        jobs_twice = cluster.sql("SELECT job_id, count(*) FROM tessera_events WHERE kind = 'job.succeeded' "
                                 "GROUP BY 1 HAVING count(*) <> 1")
        if jobs_twice:
            why.append(f"jobs merged more than once: {jobs_twice[:5]}")
        tmp = os.path.join(cluster.data, "tmp")
        left = sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []
        parts = [f for f in left if f.endswith(".part")]
        row["part_files"] = len(parts)
        if left:
            why.append(f"{len(left)} file(s) left in the data dir's tmp/ ({len(parts)} .part): {left[:5]}")
        c = cluster.counters()
        row["stale_dropped"] = c.get("stale_dropped", "?")
        row["workers_lost"] = c.get("workers_lost", "?")
        self.measure_recovery(cluster, row)

    def measure_recovery(self, cluster, row):
        """Recovery after each fault, from tessera_events (commit times of the coordinator's transactions):
        a worker fault ("requeue") is over when every shard the worker held was leased again at a later attempt; a
        coordinator or PostgreSQL fault ("resume") when the next shard was leased or finished. The longest of the
        scenario's faults goes in the table."""
        worst = None
        for when, kind, shards in row.get("recover", []):
            if kind == "requeue":
                times = []
                for j, i, a in shards:
                    r = cluster.sql(f"SELECT extract(epoch FROM min(at)) FROM tessera_events WHERE job_id = {j} "
                                    f"AND shard_idx = {i} AND kind = 'shard.leased' "
                                    f"AND (detail->>'attempt')::int > {a} AND at >= to_timestamp({when})")
                    if r and r[0][0]:
                        times.append(float(r[0][0]) - when)
                took = max(times) if times else None
            else:
                r = cluster.sql("SELECT extract(epoch FROM min(at)) FROM tessera_events WHERE kind IN "
                                f"('shard.leased', 'shard.succeeded') AND at > to_timestamp({when})")
                took = float(r[0][0]) - when if r and r[0][0] else None
            if took is not None:
                row.setdefault("recovery_each", []).append(f"{kind} {took:.1f}")
                worst = took if worst is None else max(worst, took)
        if worst is not None:
            row["recovery"] = worst

    # --- fault injectors: each returns when its faults are in; the scenario then waits for the jobs ---------

    def until(self, t0, at, cluster, ids):
        """Waits until `at` seconds after t0 (pacing of the fault schedule, not a correctness condition)."""
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() - t0 < at:
            cluster.check_processes()
            time.sleep(0.05)
        return not cluster.all_done(ids, deadline)

    def wait_for_lease(self, cluster, ids, timeout=20, prefer=None):
        """A (worker, job, shard, attempt) lease, waiting up to `timeout`; None when the jobs are done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cluster.check_processes()
            leases = [l for l in cluster.leased(deadline + 30) if l[0] in cluster.worker_names()
                      and l[0] not in cluster.expected_dead]
            if leases:
                if prefer:
                    for name in prefer:
                        for l in leases:
                            if l[0] == name:
                                return l
                return leases[0]
            if cluster.all_done(ids, deadline + 30):
                return None
            time.sleep(0.05)
        return None

    def inject_worker_kills(self, n):
        def inject(cluster, ids, t0, row):
            spacing = max(1.0, 0.7 * self.baseline_wall["main"] / n)
            order = cluster.worker_names()
            for k in range(n):
                if not self.until(t0, (k + 0.5) * spacing, cluster, ids):
                    break
                rr = order[k % len(order):] + order[:k % len(order)]
                lease = self.wait_for_lease(cluster, ids, prefer=rr)
                if lease is None:
                    break
                w = lease[0]
                held = [(j, i, a) for name, j, i, a in cluster.leased() if name == w]
                killed_at = time.time()
                cluster.signal(w, signal.SIGKILL)
                cluster.start_worker(w)
                row["faults"] += 1
                row.setdefault("recover", []).append((killed_at, "requeue", held))
                say(f"  kill {k + 1}/{n} at {time.monotonic() - t0:.1f} s: SIGKILL {w} (held job {lease[1]} "
                    f"shard {lease[2]} attempt {lease[3]}), restarted")
        return inject

    def inject_coordinator_kills(self, times):
        def inject(cluster, ids, t0, row):
            for at in times:
                if not self.until(t0, at, cluster, ids):
                    break
                leases = cluster.leased()
                row.setdefault("recover", []).append((time.time(), "resume", []))
                cluster.signal("coordinator", signal.SIGKILL)
                t_kill = time.monotonic()
                cluster.start_coordinator()
                row["faults"] += 1
                say(f"  SIGKILL of the coordinator at {t_kill - t0:.1f} s ({len(leases)} shards leased), "
                    f"listening again after {time.monotonic() - t_kill:.2f} s")
        return inject

    def inject_failover(self):
        """SIGKILL the active coordinator mid-run; the standby must take over and serve clients and workers."""
        def inject(cluster, ids, t0, row):
            at = 0.4 * self.baseline_wall["main"]
            if not self.until(t0, at, cluster, ids):
                return
            leases = cluster.leased()
            row.setdefault("recover", []).append((time.time(), "resume", []))
            cluster.signal("coordinator", signal.SIGKILL)
            t_kill = time.monotonic()
            row["faults"] += 1
            # Service back: a client request answered (by the standby, the only one listening now).
            served = None
            workers_back = None
            deadline = t_kill + 60
            while time.monotonic() < deadline and workers_back is None:
                r = cluster.cli(["workers", "--json", "--request-timeout", "1"], timeout=10, check=False)
                if r.returncode == 0:
                    if served is None:
                        served = time.monotonic() - t_kill
                    ws = json.loads(r.stdout).get("coordinator", {}).get("connected_workers", 0)
                    if ws >= WORKERS:
                        workers_back = time.monotonic() - t_kill
                        break
                time.sleep(0.1)
            if served is None:
                raise Fail(f"the standby did not serve within 60 s of the kill:\n{cluster.log_tail('standby')}")
            if workers_back is None:
                raise Fail("not every worker reconnected to the standby within 60 s")
            self.failover.append((served, workers_back))
            say(f"  SIGKILL of the active coordinator at {t_kill - t0:.1f} s ({len(leases)} shards leased): the "
                f"standby served clients after {served:.2f} s, all {WORKERS} workers after {workers_back:.2f} s")
        return inject

    def inject_pg_restart(self, mode):
        def inject(cluster, ids, t0, row):
            at = 0.4 * self.baseline_wall["main"]
            if not self.until(t0, at, cluster, ids):
                return
            pid = cluster.procs["coordinator"].pid
            leases = cluster.leased()
            t = time.monotonic()
            row.setdefault("recover", []).append((time.time(), "resume", []))
            self.pg.restart(mode)
            row["faults"] += 1
            say(f"  pg_ctl restart -m {mode} at {t - t0:.1f} s ({len(leases)} shards leased) took "
                f"{time.monotonic() - t:.2f} s")

            def after():
                p = cluster.procs["coordinator"]
                if p.pid != pid or p.poll() is not None or cluster.starts["coordinator"] != 1:
                    raise Fail("the coordinator did not ride out the PostgreSQL restart")
            return {"after": after}
        return inject

    def inject_cutoff(self, how, seconds):
        """Cuts off the worker holding the least advanced shard for `seconds`, then lets it back: how = "sigstop"
        (SIGSTOP, then SIGCONT: it computes nothing meanwhile) or "partition" (its veth link down, then up: it
        keeps computing and buffering, unheard). Either way the coordinator loses it after 1.5 s and requeues its
        shards; after() checks what must follow."""
        cut_words, restore_words = {"sigstop": ("SIGSTOP", "SIGCONT"),
                                    "partition": ("link down", "link up")}[how]

        def inject(cluster, ids, t0, row):
            if not self.until(t0, 2.0, cluster, ids):
                return
            # The worker whose shard has the most left to do, so that the cut catches it mid-shard.
            deadline = time.monotonic() + 20
            pick = None
            while pick is None and time.monotonic() < deadline:
                cluster.check_processes()
                rows = cluster.sql_retry(
                    "SELECT w.name, s.job_id, s.idx, s.attempt FROM tessera_shards s JOIN tessera_workers w "
                    "ON w.id = s.worker_id WHERE s.state = 'leased' "
                    "ORDER BY s.step::float8 / greatest(s.total_steps, 1), s.job_id DESC LIMIT 1", deadline)
                if rows:
                    pick = rows[0]
                else:
                    time.sleep(0.05)
            if pick is None:
                return
            w = pick[0]
            ready_before = cluster.registrations()[w]
            stale_before = cluster.stale_dropped()
            if stale_before is None:
                raise Fail("could not read the coordinator's stale_dropped before the cut (tessera workers --json)")
            held = [(j, i, a) for name, j, i, a in cluster.leased() if name == w]
            row.setdefault("recover", []).append((time.time(), "requeue", held))
            if how == "sigstop":
                cluster.procs[w].send_signal(signal.SIGSTOP)
                cluster.expected_dead.add(w)  # a stopped process is not checked
            else:
                cluster.net.cut(w)
            row["faults"] += 1
            t = time.monotonic()
            say(f"  {cut_words} {w} at {t - t0:.1f} s (job {pick[1]} shard {pick[2]} attempt {pick[3]} the least "
                f"advanced of its shards) for {seconds:.0f} s (lease {LEASE_SECONDS:.0f} s)")
            deadline = t + seconds
            while time.monotonic() < deadline:
                cluster.check_processes()
                time.sleep(0.1)
            if how == "sigstop":
                cluster.procs[w].send_signal(signal.SIGCONT)
                cluster.expected_dead.discard(w)
            else:
                cluster.net.restore(w)
            back_wall = time.time()
            say(f"  {restore_words} {w} at {time.monotonic() - t0:.1f} s")

            def after():
                # The cut must have cost w its shards: requeued as lost, then leased again at a later attempt.
                taken = [(int(j), int(i), int(a)) for j, i, a in cluster.sql(
                    "SELECT job_id, shard_idx, (detail->>'attempt')::int FROM tessera_events "
                    f"WHERE kind = 'shard.requeued' AND detail->>'reason' LIKE 'worker {w} lost%'")]
                if not taken:
                    raise Fail(f"the {cut_words} of {w} requeued none of its shards (it had none running any more)")
                for j, i, a in taken:
                    now = int(cluster.sql(f"SELECT attempt FROM tessera_shards WHERE job_id = {j} AND idx = {i}")[0][0])
                    if now <= a:
                        raise Fail(f"job {j} shard {i}, requeued when {w} was lost, still has attempt {now}")
                # The worker must come back (a new READY).
                limit = time.monotonic() + 60
                while cluster.registrations()[w] <= ready_before:
                    cluster.check_processes()
                    if time.monotonic() > limit:
                        raise Fail(f"{w} did not register again within 60 s of the {restore_words}:\n"
                                   f"{cluster.log_tail(w)}")
                    time.sleep(0.2)
                # Its late messages for the superseded attempts are fenced once it is back; the coordinator cancels
                # a superseded copy at every heartbeat that still reports it. Wait until those cancels stop (the
                # copies have ended) so that everything it sent late is in before the comparison.
                markers = [f"job {j} shard {i} attempt {a}" for j, i, a in taken]

                def cancel_lines():
                    with open(cluster.log_path(w), errors="replace") as f:
                        return [line for line in f if "cancelled by coordinator" in line
                                and any(f"shard={m} [" in line for m in markers)]

                def cancels():
                    return len(cancel_lines())
                limit = time.monotonic() + 120
                last, last_change = cancels(), time.monotonic()
                while time.monotonic() - last_change < 3 * HEARTBEAT + 1:
                    cluster.check_processes()
                    if time.monotonic() > limit:
                        raise Fail(f"the coordinator still cancels {w}'s superseded shards 120 s after the "
                                   f"{restore_words} ({last} CANCELs so far)")
                    time.sleep(0.2)
                    n = cancels()
                    if n != last:
                        last, last_change = n, time.monotonic()
                # A READY is not proof of a working session: one the worker queued on a socket it then gave up
                # (closed with 1 s linger, while the link was down) can still reach the coordinator, which
                # registers it and loses it again 1.5 s later. The newest registration must be alive and stay so.
                limit = time.monotonic() + 60
                while True:
                    cluster.check_processes()
                    state = cluster.sql(f"SELECT state FROM tessera_workers WHERE name = '{w}' ORDER BY id DESC "
                                        "LIMIT 1")[0][0]
                    if state == "alive":
                        time.sleep(3 * HEARTBEAT + 0.5)
                        if cluster.sql(f"SELECT state FROM tessera_workers WHERE name = '{w}' ORDER BY id DESC "
                                       "LIMIT 1")[0][0] == "alive":
                            break
                    if time.monotonic() > limit:
                        raise Fail(f"{w} has no live registration 60 s after the {restore_words} (newest: {state}):"
                                   f"\n{cluster.log_tail(w)}")
                    time.sleep(0.2)
                lines = cancel_lines()
                when = "none"
                if lines:
                    try:
                        stamp = time.mktime(time.strptime(lines[-1][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
                        d = stamp - back_wall
                        when = (f"the last {d:.0f} s after the {restore_words}" if d > 1
                                else f"the last within 1 s of the {restore_words}") + " (log time, 1 s resolution)"
                    except ValueError:
                        when = "?"
                # What it sent late for those attempts (a SHARD_FAILED answering the CANCEL, a SHARD_DONE of a copy
                # that finished while cut off, metric batches) is refused and counted.
                stale_after = cluster.stale_dropped()
                if stale_after is None or stale_after <= stale_before:
                    raise Fail(f"stale_dropped did not grow after {w} came back ({stale_before} -> {stale_after}): "
                               f"its late messages for the superseded attempts were not fenced")
                row["stale_note"] = (f"{len(taken)} shard(s) of {w} requeued and re-run elsewhere "
                                     f"({', '.join(markers)}); stale_dropped {stale_before} -> {stale_after} "
                                     f"around the cut; {len(lines)} CANCELs of its superseded copies, {when}")
            return {"after": after}
        return inject

    def inject_kill_all(self):
        def inject(cluster, ids, t0, row):
            deadline = time.monotonic() + 60
            while True:
                cluster.check_processes()
                states = cluster.job_states(ids, deadline)
                done = sum(1 for s, _ in states.values() if s == "succeeded")
                if done >= 1 and cluster.leased():
                    break
                if time.monotonic() > deadline:
                    raise Fail("no job of the queue finished within 60 s: the fault would have hit an idle cluster")
                time.sleep(0.05)
            leases = cluster.leased()
            killed_all_at = time.time()
            for name in ["coordinator"] + cluster.worker_names():
                cluster.procs[name].send_signal(signal.SIGKILL)
            for name in ["coordinator"] + cluster.worker_names():
                cluster.signal(name, signal.SIGKILL)
            states = cluster.job_states(ids, deadline)
            unfinished = sum(1 for s, _ in states.values() if s != "succeeded")
            row["faults"] += 1
            row.setdefault("recover", []).append((killed_all_at, "resume", []))
            say(f"  SIGKILL of the coordinator and all {WORKERS} workers at {time.monotonic() - t0:.1f} s: "
                f"{unfinished} of {len(ids)} jobs unfinished, {len(leases)} shards leased")
            if unfinished < len(ids) // 2:
                raise Fail(f"only {unfinished} of {len(ids)} jobs were still queued at the kill")
            cluster.start_coordinator()
            for w in cluster.worker_names():
                cluster.start_worker(w)
        return inject

    def run(self):
        only = set(self.args.only.split(",")) if self.args.only else set()
        self.pg.start()
        say(f"PostgreSQL at {self.pg.url} (durable: PostgreSQL's defaults)")
        main, queue = main_set(self.quick), queue_set(self.n_queue)

        # Baseline: both job sets on a fault-free cluster, one after the other.
        def baseline_inject(cluster, ids, t0, row):
            return None
        t = time.monotonic()
        r = self.scenario("baseline", main, baseline_inject, "the main job set, no faults", 0)
        self.baseline_wall["main"] = r["wall"] or 30.0
        rq = self.scenario("baseline-queue", queue, baseline_inject, f"{len(queue)} small jobs, no faults", 0)
        self.baseline_wall["queue"] = rq["wall"] or 10.0
        if r["verdict"] != "PASS" or rq["verdict"] != "PASS":
            say("the baseline failed: nothing to compare against")
            return
        # Queue baseline results live under their own keys; merge for comparisons.
        say(f"baseline took {time.monotonic() - t:.1f} s")

        kills = 3 if self.quick else 12
        coord_times = [2.0] if self.quick else [2.0, min(20.0, 0.75 * self.baseline_wall["main"])]
        plan = [
            ("worker-kill", main, self.inject_worker_kills(kills), f"SIGKILL a worker {kills}x, restart each", kills),
            ("coordinator-kill", main, self.inject_coordinator_kills(coord_times),
             "SIGKILL the coordinator at " + ", ".join(f"{x:.0f} s" for x in coord_times) + ", restart at once",
             len(coord_times)),
        ]
        plan.append(("coordinator-failover", main, self.inject_failover(),
                     "SIGKILL the active coordinator mid-run; a standby on the same database takes over", 1))
        if not self.quick:
            plan.append(("pg-restart-fast", main, self.inject_pg_restart("fast"), "pg_ctl restart -m fast mid-run", 1))
        plan += [
            ("pg-restart-immediate", main, self.inject_pg_restart("immediate"),
             "pg_ctl restart -m immediate mid-run", 1),
            ("worker-sigstop", main, self.inject_cutoff("sigstop", LEASE_SECONDS + 3),
             f"SIGSTOP a worker holding a shard for {LEASE_SECONDS + 3:.0f} s (> lease), SIGCONT", 1),
            ("partition-8s", main, self.inject_cutoff("partition", 8.0),
             "cut the link of a worker holding a shard for 8 s (< lease), restore it; workers in network "
             "namespaces, CURVE", 1),
        ]
        if not self.quick:
            plan.append(("partition-25s", main, self.inject_cutoff("partition", 25.0),
                         "cut the link of a worker holding a shard for 25 s (> lease), restore it; workers in "
                         "network namespaces, CURVE", 1))
        plan += [
            ("kill-all", queue, self.inject_kill_all(),
             f"{len(queue)} jobs queued, SIGKILL coordinator and workers, restart all", 1),
        ]
        for name, jobs, inject, describe, planned in plan:
            if only and name not in only:
                continue
            netns = name.startswith("partition-")
            if netns and self.netns_unavailable():
                self.skip(name, len(jobs), planned, self.netns_unavailable())
                continue
            self.scenario(name, jobs, inject, describe, planned, queue_first=(name == "kill-all"),
                          standby=(name == "coordinator-failover"), netns=netns)

    def report(self):
        cpu = "?"
        try:
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
                if line.startswith("Model name:"):
                    cpu = line.split(":", 1)[1].strip()
        except OSError:
            pass
        print()
        print(f"ops/chaos {'--quick' if self.quick else '(full)'} on {time.strftime('%Y-%m-%d %H:%M %Z')}: {cpu}, "
              f"{os.cpu_count()} CPUs, load average {self.load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at "
              f"the end; {time.monotonic() - self.t_start:.0f} s in all; {os.path.basename(self.bin)} = {self.bin}")
        cols = ["scenario", "jobs", "faults", "wall s", "recovery s", "results identical", "metrics identical",
                "failures", "verdict"]
        table = [cols]
        for r in self.rows:
            table.append([r["scenario"], str(r["jobs"]), f"{r['faults']}/{r['planned']}",
                          f"{r['wall']:.1f}" if r["verdict"] != "SKIP" else "-",
                          f"{r['recovery']:.1f}" if "recovery" in r else "-",
                          r["results"], r["metrics"], str(r["failures"]), r["verdict"]])
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        print()
        for i, row in enumerate(table):
            print("  ".join(c.ljust(widths[j]) for j, c in enumerate(row)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        print("recovery s: the longest over the scenario's faults; a worker fault is over when every shard the worker")
        print("held is leased again at a later attempt, a coordinator or PostgreSQL fault when the next shard is leased")
        print("or finished (tessera_events; each fault below)")
        for r in self.rows:
            if r.get("recovery_each"):
                print(f"  {r['scenario']:<22} " + ", ".join(r["recovery_each"]))
        print()
        print("registrations (READY) per worker: total READYs / process starts; re-registrations = the difference")
        for r in self.rows:
            if r["verdict"] == "SKIP":
                continue
            regs = r.get("reregs") or {}
            cells = [f"{w} {n}/{s} (+{n - s})" for w, (n, s) in sorted(regs.items())]
            extra = []
            if "stale_dropped" in r:
                extra.append(f"stale_dropped {r['stale_dropped']}")
            if "workers_lost" in r:
                extra.append(f"workers_lost {r['workers_lost']}")
            if "stale_note" in r:
                extra.append(r["stale_note"])
            print(f"  {r['scenario']:<22} " + ", ".join(cells) + ("   [" + "; ".join(extra) + "]" if extra else ""))
        for served, back in self.failover:
            print(f"failover: the standby served clients {served:.2f} s after the SIGKILL of the active coordinator, "
                  f"and had all {WORKERS} workers back after {back:.2f} s")
        print()
        failed = [r for r in self.rows if r["verdict"] not in ("PASS", "SKIP")]
        for r in self.rows:
            if r["verdict"] == "SKIP":
                print(f"SKIP {r['scenario']}: {r['why'][0]}")
        for r in failed:
            for w in r["why"]:
                print(f"FAIL {r['scenario']}: {w}")
        return 1 if failed or not self.rows else 0

    def cleanup(self, keep):
        for c in self.clusters:
            c.stop_all()  # and removes its network namespaces
        self.pg.stop(destroy=not keep)


def main():
    ap = argparse.ArgumentParser(prog="ops/chaos", add_help=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated scenario names (after the baseline)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-scenario bound on the jobs' completion")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    names = SCENARIOS if not args.quick else [n for n in SCENARIOS if n not in FULL_ONLY]
    unknown = sorted(set(args.only.split(",") if args.only else []) - set(names))
    if unknown:
        say(f"--only: no scenario {', '.join(unknown)} in {'--quick' if args.quick else 'the full campaign'} "
            f"(it has {', '.join(names)})")
        shutil.rmtree(args.work, ignore_errors=True)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    c = Campaign(args)
    status = 1
    interrupted = False
    start = time.monotonic()
    try:
        c.run()
        status = c.report()
    except (Interrupted, KeyboardInterrupt) as e:
        say(f"interrupted ({e or 'Ctrl-C'}); stopping everything")
        interrupted = True
        status = 130
    except Fail as e:
        say(f"error: {e}")
        c.report()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        keep = args.keep or status != 0
        c.cleanup(keep)
        if keep:
            say(f"kept {args.work} (logs: {args.work}/SCENARIO/*.log; PostgreSQL stopped, data in {args.work}/pg)")
        else:
            shutil.rmtree(args.work, ignore_errors=True)
    if not interrupted:
        say(f"finished in {time.monotonic() - start:.0f} s with status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
