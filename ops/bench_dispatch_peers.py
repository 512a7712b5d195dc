#!/usr/bin/env python3
"""Peer half of `ops/bench dispatch` (issue 9): the dispatch workloads on the task systems Tessera is compared with.

Run it through ops/bench_dispatch_peers, which installs the packages into ops/.venv-bench-dispatch and gives it a
network namespace with only loopback. Usage:
  bench_dispatch_peers.py [--peers ray,celery,dask,ipyparallel,procrastinate] [--tasks 20000]
                          [--latency-tasks 1000] [--peer-timeout 180] [--json FILE]

Every peer runs a no-op task on 8 execution slots (2 workers x 4 where the system has workers with slots, else 8
single-slot workers) and is measured on two shapes:
  throughput  --tasks tasks submitted with the peer's own many-tasks API (its bulk call where it has one), timed
              from the first submit to the last result received by the client; tasks/s;
  latency     --latency-tasks single tasks one after another, each timed from submit to its result received by the
              client; p50 and p99 in ms.
Warm-up: before timing, each peer runs WARMUP_TASKS tasks in one burst and WARMUP_SINGLES single round trips, so
imports, worker start-up and first-call costs (connections, pickling of the function) are not in the figures.
The latency test runs before the throughput test, so that it does not meet the clean-up a burst of 20,000 finished
tasks leaves behind (autovacuum of procrastinate's job table, forgetting of results and futures).

Once per run, before the peers: the single-row durable commit rate of the PostgreSQL cluster, started with
`ops/pg start --durable` (fsync, synchronous_commit, full_page_writes at their defaults, on): one connection,
autocommit, one prepared one-row INSERT after another for COMMIT_SECONDS. It is the baseline Tessera's figures are
compared to. procrastinate runs on that same durable cluster.

Bounds and cleanup: each peer runs in a child process, in its own session, with a time budget (--peer-timeout) that
every wait inside it draws on; past the budget (plus CLEANUP_GRACE_S) the parent kills the child's whole tree. A peer
that cannot be imported, started, or finish in time is reported as {"error": ...} and the run goes on with the next.
Parent and children are child subreapers, so every process a peer starts, even a daemonised one, remains a
descendant and is killed when the peer ends (also on Ctrl-C and SIGTERM); the temporary directory holding all state
(PostgreSQL's data, Ray's session, Redis, IPython profile) is removed at exit.
Network: every server binds 127.0.0.1 or a unix socket, and dashboards are off (Ray's also carries its usage
reporting, which RAY_USAGE_STATS_ENABLED=0 disables as well).

Output: one JSON document to --json FILE (stdout without it); a human table on stderr.
"""

import argparse
import asyncio
import ctypes
import datetime
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("ray", "celery", "dask", "ipyparallel", "procrastinate")
WORKERS, SLOTS_PER_WORKER = 2, 4
SLOTS = WORKERS * SLOTS_PER_WORKER
WARMUP_TASKS = 300
WARMUP_SINGLES = 20
COMMIT_SECONDS = 3.0
COMMIT_MAX = 1_000_000        # count bound of the commit loop, far above what a disk fsyncs in COMMIT_SECONDS
CLEANUP_GRACE_S = 30          # a child past its budget gets this long to stop its peer before it is killed
DEFER_BATCH = 1000            # procrastinate jobs per batch_defer (one INSERT, one commit)
PR_SET_CHILD_SUBREAPER = 36


def noop(*_):
    """Every peer's task."""
    return None


async def anoop():
    """procrastinate's task: an async one runs on the worker's event loop (a sync one would go through a thread)."""
    return None


class Budget:
    """A peer's time limit: every wait gets what is left of it, so nothing outlives it."""

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds
        self.phase = "start-up"

    def left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"time budget used up during {self.phase}")
        return left

    def range(self, n):
        """range(n) that checks the budget every 100 items, for loops that submit thousands of tasks."""
        for i in range(n):
            if i % 100 == 0:
                self.left()
            yield i


def measure(budget, args, run_batch, run_one):
    """run_batch(n): submit n tasks, return once every result is received; run_one(): the same for one task."""
    budget.phase = "warm-up"
    run_batch(WARMUP_TASKS)
    for _ in range(WARMUP_SINGLES):
        run_one()
    budget.phase = "latency"
    latencies = []
    for _ in range(args.latency_tasks):
        budget.left()
        t = time.perf_counter()
        run_one()
        latencies.append((time.perf_counter() - t) * 1e3)
    latencies.sort()
    budget.phase = "throughput"
    start = time.perf_counter()
    run_batch(args.tasks)
    elapsed = time.perf_counter() - start
    return {
        "throughput_tasks_per_s": round(args.tasks / elapsed, 1),
        "tasks": args.tasks,
        "latency_p50_ms": round(statistics.median(latencies), 3),
        "latency_p99_ms": round(latencies[math.ceil(0.99 * len(latencies)) - 1], 3),  # nearest rank
        "latency_tasks": len(latencies),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs, grace=10):
    """SIGTERM (the peers' graceful shutdown) to all, SIGKILL to those still there after grace seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(budget, what, ready, interval=0.05):
    budget.phase = f"start-up: waiting for {what}"
    while not ready():
        budget.left()
        time.sleep(interval)


# --- peers (each runs in its own child process; tmp is that child's private directory) ---

def peer_ray(budget, args, tmp):
    import ray

    # One local node with 8 CPUs: up to 8 worker processes, one task each. The node's address is pinned to
    # loopback; the object store is kept small since no-op tasks put nothing in it.
    ray.init(num_cpus=SLOTS, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "ray"),
             object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        task = ray.remote(noop)

        def run_batch(n):
            ray.get([task.remote() for _ in budget.range(n)], timeout=budget.left())

        def run_one():
            ray.get(task.remote(), timeout=budget.left())

        return {"version": ray.__version__,
                "setup": "1 local node, num_cpus=8; f.remote() per task, one ray.get on all",
                **measure(budget, args, run_batch, run_one)}
    finally:
        ray.shutdown()


def celery_app(port):
    from celery import Celery

    app = Celery("bench", broker=f"redis://127.0.0.1:{port}/0", backend=f"redis://127.0.0.1:{port}/1")
    app.conf.broker_connection_retry_on_startup = True
    app.task(name="bench.noop")(noop)
    return app


def serve_celery_worker(args):
    # Gossip, mingle and heartbeats are cluster-membership chatter that a benchmark of task dispatch does not need.
    celery_app(args.port).worker_main(["worker", "--pool=prefork", f"--concurrency={SLOTS_PER_WORKER}",
                                       "--loglevel=WARNING", f"--hostname={args.name}@localhost",
                                       "--without-gossip", "--without-mingle", "--without-heartbeat"])


def peer_celery(budget, args, tmp):
    import celery
    import redis
    from celery.result import ResultSet

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    redis_version = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    port = free_port()
    procs = [subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(tmp), "--protected-mode", "yes"])]
    try:
        client = redis.Redis(host="127.0.0.1", port=port)

        def redis_up():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(budget, "redis-server", redis_up)
        app = celery_app(port)
        procs += [subprocess.Popen([sys.executable, __file__, "--serve", "celery-worker", "--port", str(port),
                                    "--name", f"bench{i}"]) for i in range(WORKERS)]
        wait_until(budget, "both celery workers", lambda: len(app.control.ping(timeout=0.5)) == WORKERS)
        task = app.tasks["bench.noop"]

        def run_batch(n):
            ResultSet([task.delay() for _ in budget.range(n)]).get(timeout=budget.left())

        def run_one():
            task.delay().get(timeout=budget.left())

        return {"version": celery.__version__,
                "broker": next((w for w in redis_version if w.startswith("v=")), "v=?").replace("v=", "redis-server "),
                "setup": "2 workers x prefork concurrency 4, Redis broker and result backend; delay() per task, "
                         "ResultSet.get",
                **measure(budget, args, run_batch, run_one)}
    finally:
        stop(procs[1:])  # the workers first, while their broker is still there
        stop(procs[:1])


def peer_dask(budget, args, tmp):
    import distributed
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=WORKERS, threads_per_worker=SLOTS_PER_WORKER, processes=True, host="127.0.0.1",
                      dashboard_address=None, local_directory=str(tmp / "dask")) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(WORKERS, timeout=budget.left())

        def run_batch(n):
            futures = client.map(noop, range(n), pure=False)
            wait(futures, timeout=budget.left())
            client.gather(futures)

        def run_one():
            client.submit(noop, pure=False).result(timeout=budget.left())

        return {"version": distributed.__version__,
                "setup": "LocalCluster 2 worker processes x 4 threads; client.map(pure=False), wait, gather",
                **measure(budget, args, run_batch, run_one)}


def peer_ipyparallel(budget, args, tmp):
    import ipyparallel as ipp

    # Engines are single-threaded processes, so 8 of them; the controller listens on loopback only.
    cluster = ipp.Cluster(n=SLOTS, controller_ip="127.0.0.1", controller_location="127.0.0.1",
                          profile_dir=str(tmp / "ipython" / "profile_bench"), log_level=logging.WARNING)
    try:
        cluster.start_cluster_sync()
        rc = cluster.connect_client_sync()
        try:
            rc.wait_for_engines(SLOTS, timeout=budget.left())
            view = rc.load_balanced_view()

            def run_batch(n):
                view.map_async(noop, range(n), chunksize=1).get(timeout=budget.left())

            def run_one():
                view.apply_async(noop).get(timeout=budget.left())

            return {"version": ipp.__version__,
                    "setup": "8 engines, load-balanced view; map_async(chunksize=1), get",
                    **measure(budget, args, run_batch, run_one)}
        finally:
            rc.close()
    finally:
        cluster.stop_cluster_sync()


def procrastinate_app(conninfo):
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=conninfo))
    app.task(name="bench_noop", queue="bench")(anoop)
    return app


def serve_procrastinate_worker(args):
    logging.basicConfig(level=logging.WARNING)
    procrastinate_app(args.pg_url).run_worker(queues=["bench"], concurrency=SLOTS_PER_WORKER, name=args.name)


# procrastinate has no result channel: a job's end is its row turning 'succeeded'. This trigger announces it, so the
# client waits on LISTEN instead of polling the table (which would compete with the workers for the 2 cores).
DONE_TRIGGER = """
CREATE FUNCTION bench_notify_done() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_notify('bench_done', NEW.id::text); RETURN NEW; END $$;
CREATE TRIGGER bench_notify_done AFTER UPDATE OF status ON procrastinate_jobs
    FOR EACH ROW WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION bench_notify_done();
LISTEN bench_done;
"""


def peer_procrastinate(budget, args, tmp):
    import importlib.metadata

    import psycopg
    from psycopg.conninfo import make_conninfo

    if not args.pg_url:
        raise RuntimeError("no PostgreSQL cluster (see the postgres entry)")
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench_procrastinate")
    conninfo = make_conninfo(args.pg_url, dbname="bench_procrastinate")
    app = procrastinate_app(conninfo)
    task = app.tasks["bench_noop"]
    loop = asyncio.new_event_loop()
    procs = []
    listener = None
    try:
        async def setup():
            await app.open_async()
            await app.schema_manager.apply_schema_async()
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            await conn.execute(DONE_TRIGGER)
            return conn

        listener = loop.run_until_complete(setup())
        procs += [subprocess.Popen([sys.executable, __file__, "--serve", "procrastinate-worker", "--pg-url", conninfo,
                                    "--name", f"bench{i}"]) for i in range(WORKERS)]

        async def count_workers():
            cur = await listener.execute("SELECT count(*) FROM procrastinate_workers")
            return (await cur.fetchone())[0]

        wait_until(budget, "both procrastinate workers", lambda: loop.run_until_complete(count_workers()) == WORKERS)

        async def wait_done(n):
            received = 0
            while received < n:
                async for _ in listener.notifies(timeout=budget.left(), stop_after=n - received):
                    received += 1

        async def defer_all(n):
            for first in range(0, n, DEFER_BATCH):
                budget.left()
                await task.batch_defer_async(*({} for _ in range(min(DEFER_BATCH, n - first))))

        async def batch(n):
            await asyncio.gather(defer_all(n), wait_done(n))

        async def one():
            job_id = await task.defer_async()
            while True:
                async for note in listener.notifies(timeout=budget.left()):
                    if int(note.payload) == job_id:
                        return

        return {"version": importlib.metadata.version("procrastinate"),
                "setup": "2 workers x concurrency 4, PostgreSQL (durable), psycopg 3; batch_defer_async of "
                         f"{DEFER_BATCH} jobs per commit; completion by a NOTIFY trigger",
                **measure(budget, args, lambda n: loop.run_until_complete(batch(n)),
                          lambda: loop.run_until_complete(one()))}
    finally:
        stop(procs)
        if listener is not None:
            loop.run_until_complete(listener.close())
        loop.run_until_complete(app.close_async())
        loop.close()


PEER_RUNNERS = {"ray": peer_ray, "celery": peer_celery, "dask": peer_dask, "ipyparallel": peer_ipyparallel,
                "procrastinate": peer_procrastinate}
SERVERS = {"celery-worker": serve_celery_worker, "procrastinate-worker": serve_procrastinate_worker}


# --- process tree ---

def become_subreaper():
    """Orphans of our descendants (daemons such as the postmaster or Ray's raylet) get reparented to us, not init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def live_descendants(keep=()):
    """Our live descendants' pids, leaving out the subtrees rooted at the pids in keep."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in keep:
                found.append(pid)
                todo.append(pid)
    return found


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(keep=()):
    """SIGTERM every descendant but those in keep's subtrees, SIGKILL what is still there 5 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = live_descendants(keep)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 5
        while pids and time.monotonic() < end:
            time.sleep(0.1)
            reap()
            pids = live_descendants(keep)
        if not pids:
            return


def exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# --- child: one peer ---

def child(args):
    become_subreaper()
    signal.signal(signal.SIGTERM, exit_on_signal)
    budget = Budget(args.peer_timeout)
    try:
        result = PEER_RUNNERS[args.child](budget, args, Path.cwd())
    except ImportError as e:
        result = {"error": f"not installed: {e}"}
    except BaseException as e:  # SystemExit from SIGTERM too: report what was going on
        traceback.print_exc()
        result = {"error": f"{type(e).__name__} during {budget.phase}: {e}"}
    Path(args.out).write_text(json.dumps(result))


def run_peer(peer, args, work, pg_url, keep):
    tmp = work / peer
    tmp.mkdir()
    out, log = tmp / "result.json", tmp / "log"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", IPYTHONDIR=str(tmp / "ipython"), TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)  # ray.init must start its own local cluster, never join another
    cmd = [sys.executable, __file__, "--child", peer, "--out", str(out), "--tasks", str(args.tasks),
           "--latency-tasks", str(args.latency_tasks), "--peer-timeout", str(args.peer_timeout), "--pg-url", pg_url]
    print(f"bench-dispatch-peers: {peer} (log in {log} until the end of the run)", file=sys.stderr, flush=True)
    started = time.monotonic()
    killed = None
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(args.peer_timeout + CLEANUP_GRACE_S)
        except subprocess.TimeoutExpired:
            killed = f"killed after {args.peer_timeout + CLEANUP_GRACE_S} s: no result within --peer-timeout"
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGTERM lets the child stop its peer in order
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
            kill_descendants(keep)
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"error": killed or f"exited with status {proc.returncode} without a result"}
    result["wall_s"] = round(time.monotonic() - started, 1)
    if "error" in result:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        print(f"bench-dispatch-peers: {peer} failed: {result['error']}" + (f"; end of its log:\n{tail}" if tail else ""),
              file=sys.stderr)
    return result


# --- parent ---

def machine_info():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def start_postgres(pg_dir):
    """Starts the durable cluster; returns its URL and the postmaster's pid."""
    proc = subprocess.run([str(ROOT / "ops" / "pg"), "start", str(pg_dir), "--durable"], stdout=subprocess.PIPE,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ops/pg start --durable failed with status {proc.returncode}")
    postmaster = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
    return proc.stdout.strip(), postmaster


def postgres_figures(url):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        figures = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                   for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                                "wal_sync_method")}
        conn.execute("CREATE TABLE bench_commit (id bigint PRIMARY KEY, v int NOT NULL)")
        insert = "INSERT INTO bench_commit VALUES (%s, %s)"
        for i in range(10):  # prepares the statement and warms the WAL path before timing
            conn.execute(insert, (-1 - i, 0), prepare=True)
        n, start = 0, time.perf_counter()
        while n < COMMIT_MAX and time.perf_counter() - start < COMMIT_SECONDS:
            conn.execute(insert, (n, n), prepare=True)
            n += 1
        figures["single_row_commits_per_s"] = round(n / (time.perf_counter() - start), 1)
        conn.execute("DROP TABLE bench_commit")
    return figures


def print_table(doc):
    m, pg = doc["machine"], doc["postgres"]
    lines = [f"{m['date']}  {m['cores']} CPUs: {m['cpu']}; load average (1 min) at start {m['load_1m']:.2f}"]
    if "error" in pg:
        lines.append(f"postgres: error: {pg['error']}")
    else:
        lines.append(f"postgres {pg['server_version']}: fsync={pg['fsync']} synchronous_commit="
                     f"{pg['synchronous_commit']}; single-row durable commits: {pg['single_row_commits_per_s']:,.0f}/s")
    lines.append(f"{'peer':<14} {'version':<10} {'tasks/s':>9} {'tasks':>7} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    for name, r in doc["peers"].items():
        if "error" in r:
            lines.append(f"{name:<14} error: {r['error']}")
        else:
            lines.append(f"{name:<14} {r['version']:<10} {r['throughput_tasks_per_s']:>9,.0f} {r['tasks']:>7} "
                         f"{r['latency_p50_ms']:>8.2f} {r['latency_p99_ms']:>8.2f} {r['latency_tasks']:>5}")
    print("\n".join(lines), file=sys.stderr)


def parent(args):
    become_subreaper()
    # SIGINT too: a shell starts a background job with SIGINT ignored, which Python would keep.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    doc = {"machine": machine_info(), "postgres": {}, "peers": {}}
    work = Path(tempfile.mkdtemp(prefix="tessera-bdp.", dir="/tmp"))
    work.chmod(0o755)  # the postgres user must reach its cluster directory inside
    pg_dir, pg_url, keep = work / "pg", "", ()
    try:
        try:
            pg_url, postmaster = start_postgres(pg_dir)
            keep = (postmaster,)
            doc["postgres"] = postgres_figures(pg_url)
        except Exception as e:
            doc["postgres"] = {"error": f"{type(e).__name__}: {e}"}
        for peer in args.peers:
            doc["peers"][peer] = run_peer(peer, args, work, pg_url, keep)
    finally:
        if (pg_dir / "data").exists():
            subprocess.run([str(ROOT / "ops" / "pg"), "destroy", str(pg_dir)], timeout=120, check=False)
        kill_descendants()
        reap()
        shutil.rmtree(work, ignore_errors=True)
    print_table(doc)
    text = json.dumps(doc, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)


def peer_list(text):
    peers = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return peers


def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def main():
    ap = argparse.ArgumentParser(description="Peer task systems for `ops/bench dispatch` (issue 9).")
    ap.add_argument("--peers", type=peer_list, default=list(PEERS), help="comma-separated (default: all)")
    ap.add_argument("--tasks", type=positive, default=20_000, help="tasks of the throughput test")
    ap.add_argument("--latency-tasks", type=positive, default=1000, help="sequential single tasks of the latency test")
    ap.add_argument("--peer-timeout", type=positive, default=180, help="seconds each peer may take, start-up included")
    ap.add_argument("--json", metavar="FILE", help="write the results there (default: stdout)")
    # Internal: the parent starts itself as --child for each peer, and peers start their workers with --serve.
    for flag in ("--child", "--serve", "--out", "--pg-url", "--name"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        SERVERS[args.serve](args)
    elif args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
