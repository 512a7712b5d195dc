#!/usr/bin/env python3
"""`ops/bench workers` (issue 9): a coordinator with 1,000 / 10,000 simulated workers. Figures, not a test.

Run by ops/bench, which starts a durable PostgreSQL, the coordinator and 2 real workers x 4 slots, then:
  bench_workers.py --endpoint EP --coordinator-pid PID --pg-data DIR --bin BUILD/release [--counts 1000,10000]
                   [--seconds 20] [--shards 5000] [--latency-jobs 50] [--json FILE]
  bench_workers.py --simulate N --endpoint EP --status FILE   (the simulator; started by the driver)

Simulator: one process, one zmq Context, N DEALER sockets. Each sends READY (capability `sampling/none`, which no
job has, so it is never leased a shard), then a HEARTBEAT every second (credits = slots, no progress), the N
heartbeats spread evenly over the second; it answers nothing. It counts what comes back by type (HEARTBEAT,
ERROR by code — 100 notReady means the coordinator had forgotten it —, DISCONNECT, DISPATCH, CANCEL) and writes
the counts to --status every second. SIGTERM: a DISCONNECT on every socket, then exit.

Driver, in order: (0) coordinator CPU with the 2 real workers only and the baseline dispatch run; for each N:
start the simulator, wait until all N are registered (each got the HEARTBEAT that answers READY), (a) the CPU of
the coordinator, of PostgreSQL and of the simulator over --seconds while only heartbeats flow, (b) `tessera-bench
dispatch --shards S --latency-jobs L --stream-shards 0` while the N heartbeat, (c) the coordinator's VmHWM, and
`tessera workers --json`'s alive count (N + 2 expected); stop the simulator; finally the baseline run again.
"""
import argparse
import heapq
import json
import os
import resource
import signal
import subprocess
import sys
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_wire as bw  # noqa: E402

SIM_SLOTS = 4
SIM_CAPABILITIES = ["sampling/none"]
HEARTBEAT_S = 1.0
CONNECTS_PER_S = 2500


# --- the simulator ---

def simulate(args):
    n = args.simulate
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 3 * n + 1024)  # a socket: its TCP fd and its mailbox fd; plus the io threads' and ours
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))  # above the hard limit: root only
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = zmq.Context(io_threads=2)
    ctx.set(zmq.MAX_SOCKETS, n + 64)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    tag = f"sim{os.getpid()}"
    sockets, registered = [], bytearray(n)
    counts = {"registered": 0, "heartbeats_sent": 0, "send_dropped": 0, "received": {}, "errors": {},
              "max_heartbeat_lag_s": 0.0, "started_at": time.time()}
    hb = bw.heartbeat(SIM_SLOTS)

    def write_status():
        tmp = args.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, args.status)

    def drain(i):
        while True:
            try:
                got = sockets[i].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = bw.message_type(got)
            counts["received"][kind] = counts["received"].get(kind, 0) + 1
            if kind == "HEARTBEAT" and not registered[i]:
                registered[i] = 1
                counts["registered"] += 1
            elif kind == "ERROR":
                code = str(bw.error_code(got))
                counts["errors"][code] = counts["errors"].get(code, 0) + 1

    # Each socket: READY when it connects, then a HEARTBEAT every second from then on (a heap of due times). The
    # connects are paced at CONNECTS_PER_S (the ROUTER's listen backlog, ZMQ_BACKLOG, is 100) and interleaved with
    # the heartbeats of the sockets already connected, so none is silent for long. Reading what came back happens
    # when a socket's heartbeat is due (the coordinator's own heartbeat is once a second; RCVHWM holds the rest):
    # no poll over N sockets.
    due = []
    t0 = time.monotonic()
    next_status = t0
    while not stopping:
        now = time.monotonic()
        while len(sockets) < n and len(sockets) < (now - t0) * CONNECTS_PER_S + 1:
            i = len(sockets)
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100)
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.connect(args.endpoint)
            sock.send_multipart(bw.ready(f"{tag}-{i:05d}", SIM_SLOTS, SIM_CAPABILITIES), zmq.NOBLOCK)
            sockets.append(sock)
            heapq.heappush(due, (now + HEARTBEAT_S, i))
            if len(sockets) == n:
                counts["connect_seconds"] = round(now - t0, 2)
        while due and due[0][0] <= now:
            at, i = heapq.heappop(due)
            lag = now - at
            if lag > counts["max_heartbeat_lag_s"]:
                counts["max_heartbeat_lag_s"] = round(lag, 3)
            drain(i)
            try:
                sockets[i].send_multipart(hb, zmq.NOBLOCK)
                counts["heartbeats_sent"] += 1
            except zmq.Again:
                counts["send_dropped"] += 1
            heapq.heappush(due, (at + HEARTBEAT_S if lag < HEARTBEAT_S else now + HEARTBEAT_S, i))
        if now >= next_status:
            write_status()
            next_status = now + 1.0
        wake = min(due[0][0] if due else now + 0.01, now + 0.01)
        time.sleep(max(0.0, wake - time.monotonic()))
    for s in sockets:
        try:
            s.send_multipart(bw.disconnect("simulation over"), zmq.NOBLOCK)
        except zmq.Again:
            pass
    write_status()
    time.sleep(1.0)  # let the io threads flush the DISCONNECTs (LINGER 0 would drop them at close)
    for s in sockets:
        s.close(0)
    ctx.term()


# --- the driver ---

def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def merge_status(parts):
    out = {"registered": 0, "heartbeats_sent": 0, "send_dropped": 0, "received": {}, "errors": {},
           "max_heartbeat_lag_s": 0.0}
    for p in parts:
        for k in ("registered", "heartbeats_sent", "send_dropped"):
            out[k] += p.get(k, 0)
        for k in ("received", "errors"):
            for name, v in p.get(k, {}).items():
                out[k][name] = out[k].get(name, 0) + v
        out["max_heartbeat_lag_s"] = max(out["max_heartbeat_lag_s"], p.get("max_heartbeat_lag_s", 0.0))
    return out


def cancel_unfinished(args):
    client = bw.Client(args.endpoint)
    try:
        for state in ("running", "queued"):
            _, body, _ = client.call("status", {"limit": 10000, "state": state})
            for job in body.get("jobs", []):
                client.call("cancel", {"job": job["id"]})
                print(f"  cancelled unfinished job {job['id']} ({state}, {job.get('shards_succeeded')}/"
                      f"{job.get('shards')} shards succeeded)", file=sys.stderr)
    except TimeoutError as e:
        print(f"  could not cancel the unfinished jobs: {e}", file=sys.stderr)
    finally:
        client.close()


def dispatch_run(args, label):
    cmd = [f"{args.bin}/tessera-bench", "dispatch", "--coordinator", args.endpoint, "--shards", str(args.shards),
           "--latency-jobs", str(args.latency_jobs), "--stream-shards", "0", "--timeout", "120"]
    load = bw.loadavg()
    t = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "tessera-bench dispatch did not finish within 900 s", "load": load}
    if out.returncode != 0:
        print(f"[{label}] tessera-bench dispatch failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        cancel_unfinished(args)  # so the next phase does not start behind the job left in the queue
        return {"error": out.stderr.strip()[-300:], "load": load}
    r = json.loads(out.stdout)
    r["load"] = load
    r["wall_seconds"] = round(time.monotonic() - t, 1)
    print(f"[{label}] dispatch {r['throughput_shards_per_s']:,.0f} shards/s, latency p50 {r['latency_p50_ms']:.2f} ms "
          f"p99 {r['latency_p99_ms']:.2f} ms (load {load})", file=sys.stderr)
    return r


def alive_workers(args, client):
    """(alive per `tessera workers --json`, seconds it took, alive per the pyzmq client as a cross-check)."""
    t = time.monotonic()
    cli = subprocess.run([f"{args.bin}/tessera", "workers", "--json", "--coordinator", args.endpoint],
                         capture_output=True, text=True, timeout=120)
    took = round(time.monotonic() - t, 2)
    cli_alive = None
    if cli.returncode == 0:
        doc = json.loads(cli.stdout)
        cli_alive = sum(1 for w in doc.get("workers", []) if w.get("state") == "alive")
    else:
        print(f"tessera workers --json failed ({cli.returncode}): {cli.stderr.strip()[-300:]}", file=sys.stderr)
    try:
        _, body, size = client.call("workers", {}, timeout=60)
        py_alive = sum(1 for w in body["workers"] if w["state"] == "alive")
        counters = body.get("coordinator", {})
    except TimeoutError:
        py_alive, counters, size = None, {}, 0
    return cli_alive, took, py_alive, counters, size


def driver(args):
    coord = args.coordinator_pid
    client = bw.Client(args.endpoint)
    groups = {"coordinator": lambda: [coord], "postgres": lambda: bw.postgres_pids(args.pg_data)}
    results = {"machine": f"{bw.cpu_model()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "settings": vars(args).copy(), "runs": []}

    print(f"[0 simulated] coordinator CPU over {args.seconds} s (2 real workers idle)", file=sys.stderr)
    w = bw.CpuWindow(groups)
    w.start()
    time.sleep(args.seconds)
    cpu0 = w.stop()
    print(f"[0 simulated] CPU: coordinator {cpu0['coordinator']} %, postgres {cpu0['postgres']} %", file=sys.stderr)
    base = dispatch_run(args, "0 simulated")
    results["baseline_before"] = {"cpu": cpu0, "load": bw.loadavg(), "dispatch": base,
                                  "coordinator_hwm_kb": bw.status_kb(coord, "VmHWM")}

    for n in args.counts:
        # A socket costs 2 fds (its TCP connection, its mailbox); the hard RLIMIT_NOFILE (not raisable without
        # CAP_SYS_RESOURCE) caps how many one process holds, so N beyond that is split over a few processes.
        per_proc = max(1, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 1024) // 2)
        nproc = -(-n // per_proc)
        sizes = [n // nproc + (1 if k < n % nproc else 0) for k in range(nproc)]
        statuses = [f"{args.work}/sim-{n}-{k}.json" for k in range(nproc)]
        sims = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--simulate", str(size), "--endpoint",
                                  args.endpoint, "--status", st]) for size, st in zip(sizes, statuses)]
        run = {"n": n, "simulator_processes": nproc}

        def sim_status():
            return merge_status([read_json(st) for st in statuses])
        try:
            t = time.monotonic()
            while time.monotonic() - t < args.register_timeout:
                if sim_status().get("registered", 0) >= n or any(p.poll() is not None for p in sims):
                    break
                time.sleep(0.5)
            st = sim_status()
            run["registered"] = st.get("registered", 0)
            run["register_seconds"] = round(time.monotonic() - t, 1)
            print(f"[{n} simulated] {run['registered']:,} registered in {run['register_seconds']} s "
                  f"({nproc} simulator process{'es' if nproc > 1 else ''})", file=sys.stderr)
            time.sleep(3)  # the registration batch's aftermath
            groups_n = dict(groups, simulator=lambda: [p.pid for p in sims])
            w = bw.CpuWindow(groups_n)
            w.start()
            time.sleep(args.seconds)
            run["cpu"] = w.stop()
            run["load_idle"] = bw.loadavg()
            print(f"[{n} simulated] CPU over {run['cpu']['seconds']} s: coordinator {run['cpu']['coordinator']} %, "
                  f"postgres {run['cpu']['postgres']} %, simulator {run['cpu']['simulator']} % (load {run['load_idle']})",
                  file=sys.stderr)
            run["dispatch"] = dispatch_run(args, f"{n} simulated")
            run["coordinator_hwm_kb"] = bw.status_kb(coord, "VmHWM")
            run["coordinator_rss_kb"] = bw.status_kb(coord, "VmRSS")
            cli_alive, took, py_alive, counters, size = alive_workers(args, client)
            run.update(alive_cli=cli_alive, workers_cli_seconds=took, alive_request=py_alive,
                       workers_reply_bytes=size, coordinator_counters=counters)
            run["simulator"] = sim_status()
            print(f"[{n} simulated] alive: {cli_alive} (tessera workers --json, {took} s), {py_alive} (request); "
                  f"coordinator VmHWM {run['coordinator_hwm_kb'] / 1024:.0f} MiB; simulator got "
                  f"{run['simulator'].get('received')} errors {run['simulator'].get('errors')}", file=sys.stderr)
        finally:
            for p in sims:
                p.send_signal(signal.SIGTERM)
            for p in sims:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        run["simulator"] = sim_status() or run.get("simulator", {})
        results["runs"].append(run)
        time.sleep(3)  # DISCONNECTs processed before the next phase

    results["baseline_after"] = {"dispatch": dispatch_run(args, "0 simulated, after"), "load": bw.loadavg()}
    client.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results)


def print_table(r):
    b0, b1 = r["baseline_before"]["dispatch"], r["baseline_after"]["dispatch"]
    base = [d["throughput_shards_per_s"] for d in (b0, b1) if "throughput_shards_per_s" in d]
    ref = sum(base) / len(base) if base else None
    print(f"machine: {r['machine']}; {r['date']}")
    cpu0 = r["baseline_before"]["cpu"]
    print(f"0 simulated workers: coordinator {cpu0['coordinator']} % of a core, postgres {cpu0['postgres']} % "
          f"over {cpu0['seconds']} s; dispatch "
          + " / ".join(f"{x:,.0f}" for x in base) + " shards/s (before / after)")
    print()
    hdr = (f"{'simulated':>9} {'reg. s':>6} {'coord CPU %':>11} {'pg CPU %':>8} {'sim CPU %':>9} {'shards/s':>9} "
           f"{'vs base':>7} {'p50 ms':>7} {'p99 ms':>7} {'VmHWM MiB':>9} {'alive':>6} {'notReady':>8} {'DISCONN':>7} "
           f"{'load':>15}")
    print(hdr)
    for run in r["runs"]:
        d, cpu, sim = run.get("dispatch", {}), run.get("cpu", {}), run.get("simulator", {})
        tp = d.get("throughput_shards_per_s")
        ratio = f"{tp / ref:.2f}" if tp and ref else "-"
        print(f"{run['n']:>9,} {run.get('register_seconds', 0):>6} {cpu.get('coordinator', '-'):>11} "
              f"{cpu.get('postgres', '-'):>8} {cpu.get('simulator', '-'):>9} {tp or 0:>9,.0f} {ratio:>7} "
              f"{d.get('latency_p50_ms', 0):>7.2f} {d.get('latency_p99_ms', 0):>7.2f} "
              f"{run.get('coordinator_hwm_kb', 0) / 1024:>9.0f} {str(run.get('alive_cli')):>6} "
              f"{sim.get('errors', {}).get('100', 0):>8} {sim.get('received', {}).get('DISCONNECT', 0):>7} "
              f"{run.get('load_idle', ''):>15}")
    print()
    print("targets (issue 9): coordinator CPU < 25 % at 1k, < 50 % at 10k; dispatch within 20 % of the baseline; "
          "alive = N + 2; no notReady/DISCONNECT")
    for run in r["runs"]:
        sim = run.get("simulator", {})
        print(f"  {run['n']:,}: received {sim.get('received')}, errors by code {sim.get('errors')}, "
              f"max heartbeat lag {sim.get('max_heartbeat_lag_s')} s, send dropped {sim.get('send_dropped')}; "
              f"coordinator workers_lost={run.get('coordinator_counters', {}).get('workers_lost')}; "
              f"workers --json took {run.get('workers_cli_seconds')} s ({run.get('workers_reply_bytes', 0):,} bytes)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulate", type=int, help="run the simulator with this many workers")
    p.add_argument("--status", help="simulator: status file")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--coordinator-pid", type=int)
    p.add_argument("--pg-data", help="the PostgreSQL data directory (for its processes' CPU)")
    p.add_argument("--bin", help="directory of the release tessera and tessera-bench")
    p.add_argument("--work", default="/tmp")
    p.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--shards", type=int, default=5000)
    p.add_argument("--latency-jobs", type=int, default=50)
    p.add_argument("--register-timeout", type=float, default=180)
    p.add_argument("--json")
    args = p.parse_args()
    if args.simulate:
        simulate(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
