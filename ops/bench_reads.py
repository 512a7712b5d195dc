#!/usr/bin/env python3
"""`ops/bench reads` (issue 9): CLI reads against a big database while the coordinator dispatches. Figures only.

Run by ops/bench, in two steps around the start of the coordinator:
  bench_reads.py seed --pg-url URL [--jobs 10000] [--metric-rows 10000000] [--budget 180]
  bench_reads.py measure --pg-url URL --endpoint EP --bin BUILD/release [--shards 20000] [--idle-seconds 10]
                 [--json FILE]

seed: fills the schema of migrations/0001 + 0002 directly in SQL (INSERT ... SELECT generate_series), with rows
shaped like the coordinator's own: --jobs finished jobs (sampling/ddim, rl/rloo, preference/dpo in turn; 90 %
succeeded with a result, 7 % failed with one failed shard, 3 % cancelled half-way; 4-64 shards each, with slices,
summaries, last_metrics and shards_succeeded as the coordinator keeps them), and --metric-rows metric rows: the same
number per job, on shards 0-3, names `kl` and `loss`, steps 0..K-1. Metric rows go in by chunks of jobs in primary
key order with foreign-key triggers off for the load (session_replication_role = replica; every row references an
existing shard); if --budget seconds are used up the load stops there and the count actually seeded is reported.
Then VACUUM ANALYZE, as autovacuum would have done by then. Jobs are terminal, so the coordinator never leases them.

measure: (1) `tessera-bench dispatch --shards S --latency-jobs 10 --stream-shards 0` alone (the reference
throughput); (2) --idle-seconds of reads with nothing dispatching; (3) the same dispatch again while one client (a
pyzmq DEALER speaking REQUEST exactly as the CLI does) loops, one request at a time, over the three reads:
`status` {"limit": 50} (= `tessera status`), `status` {"job": J, "events": false} (= `tessera status J`) and
`metrics` {"job": J, "limit": 1000} (= `tessera metrics J --limit 1000`), J a random seeded job. Latency: from
send to reply received. Then: `worker.lost` events and workers not alive since the start of the run.
"""
import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_wire as bw  # noqa: E402

SEED_WORKERS = 16
METRIC_SHARDS = 4
METRIC_NAMES = ["kl", "loss"]   # primary-key order
JOB_CHUNK = 250                 # jobs per metrics INSERT


JOBS_SQL = """
INSERT INTO tessera_workers (name, host, slots, capabilities, state, connected_at, last_heartbeat, disconnected_at)
SELECT 'seed-worker-' || w, 'seed-host-' || (w %% 4), 4,
       ARRAY['sampling/ddim', 'rl/rloo', 'preference/dpo']::text[], 'gone',
       now() - interval '30 days', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, %(workers)s) w;

INSERT INTO tessera_jobs (id, name, kind, algorithm, spec, source_text, seed, priority, max_attempts, shard_count,
                          depends_on, state, result, error, created_at, started_at, finished_at, shards_succeeded)
SELECT g, x.name, x.kind::tessera_job_kind, x.algorithm,
       jsonb_build_object('name', x.name, 'kind', x.kind, 'algorithm', x.algorithm, 'seed', g, 'shards', x.sc,
                          'priority', 0, 'max_attempts', 3,
                          'params', CASE x.kind WHEN 'sampling' THEN
                              jsonb_build_object('samples', x.sc * 4096, 'sampling_steps', 50, 'eta', 0,
                                  'target', jsonb_build_object('means', '[[2, 0], [0, 2], [-2, 0], [0, -2]]'::jsonb,
                                                               'stds', '[0.2, 0.2, 0.2, 0.2]'::jsonb))
                              ELSE jsonb_build_object('steps', 125, 'lr', 0.001,
                                  'sweep', jsonb_build_object('beta', '[0.05, 0.1, 0.2, 0.5]'::jsonb)) END),
       format(E'name: %%s\\nkind: %%s\\nalgorithm: %%s\\nseed: %%s\\nshards: %%s\\nparams:\\n  steps: 125\\n',
              x.name, x.kind, x.algorithm, g, x.sc),
       g, 0, 3, x.sc, '{}', x.state::tessera_job_state,
       CASE WHEN x.state = 'succeeded' THEN jsonb_build_object('format', 'seeded', 'shards', x.sc,
            'mean_sq_norm', round((2 + random())::numeric, 6), 'finite', x.sc * 4096) END,
       CASE WHEN x.state = 'failed' THEN 'shard 1 failed 3 times: spec.params.eta: must be >= 0' END,
       x.created, x.created + interval '2 seconds', x.created + interval '2 seconds' + x.sc * interval '3 seconds',
       CASE x.state WHEN 'succeeded' THEN x.sc WHEN 'failed' THEN x.sc - 1 ELSE x.sc / 2 END
FROM generate_series(1, %(jobs)s) g,
LATERAL (SELECT k.kind, k.algorithm, 'seed-' || k.algorithm || '-' || g AS name, 4 + (g * 7) %% 61 AS sc,
                CASE WHEN g %% 100 < 90 THEN 'succeeded' WHEN g %% 100 < 97 THEN 'failed' ELSE 'cancelled' END AS state,
                now() - interval '20 days' + g * interval '2 minutes' AS created
         FROM (VALUES (0, 'sampling', 'ddim'), (1, 'rl', 'rloo'), (2, 'preference', 'dpo')) k(m, kind, algorithm)
         WHERE k.m = g %% 3) x;
SELECT setval('tessera_jobs_id_seq', %(jobs)s);

INSERT INTO tessera_shards (job_id, idx, slice, priority, state, attempt, failures, worker_id, lease_expires_at,
                            step, total_steps, last_metrics, summary, error, updated_at)
SELECT j.id, i,
       CASE j.kind WHEN 'sampling' THEN jsonb_build_object('start', i * 4096, 'end', (i + 1) * 4096)
            ELSE jsonb_build_object('point', i, 'beta', 0.05 * (1 + i %% 4), 'seed', j.id) END,
       0, s.state::tessera_shard_state, CASE WHEN s.state = 'failed' THEN 3 ELSE 1 END,
       CASE WHEN s.state = 'failed' THEN 3 ELSE 0 END, NULL, NULL,
       CASE WHEN s.state = 'cancelled' THEN 60 ELSE 125 END, 125,
       CASE WHEN s.state = 'cancelled' THEN '{}'::jsonb ELSE jsonb_build_object(
            'loss', jsonb_build_object('step', 124, 'value', round((exp(-124 / 50.0) + 0.01 * random())::numeric, 6)),
            'kl', jsonb_build_object('step', 124, 'value', round((0.124 + 0.01 * random())::numeric, 6))) END,
       CASE WHEN s.state = 'succeeded' THEN jsonb_build_object('index', i, 'point', i, 'n', 4096, 'finite', true,
            'nan_count', 0, 'mean_sq_norm', round((2 + random())::numeric, 6), 'kl_to_ref', round(random()::numeric, 6),
            'expected_reward', round(random()::numeric, 6), 'steps', 125) END,
       CASE WHEN s.state = 'failed' THEN 'spec.params.eta: must be >= 0' END,
       j.finished_at
FROM tessera_jobs j, generate_series(0, j.shard_count - 1) i,
LATERAL (SELECT CASE WHEN j.state = 'succeeded' THEN 'succeeded'
                     WHEN j.state = 'failed' THEN CASE WHEN i = 1 THEN 'failed' ELSE 'succeeded' END
                     ELSE CASE WHEN i < j.shard_count / 2 THEN 'succeeded' ELSE 'cancelled' END END AS state) s;
"""

METRICS_SQL = """
INSERT INTO tessera_metrics (job_id, shard_idx, name, step, value, attempt, created_at)
SELECT j, s, n.name, st,
       CASE n.name WHEN 'loss' THEN exp(-st / 50.0) + 0.01 * random() ELSE 0.001 * st + 0.01 * random() END,
       CASE WHEN j %% 100 >= 90 AND j %% 100 < 97 AND s = 1 THEN 3 ELSE 1 END,
       now() - interval '20 days' + j * interval '2 minutes' + st * interval '20 ms'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) j, generate_series(0, %(shards)s::int - 1) s,
     unnest(%(names)s::text[]) n(name), generate_series(0::bigint, %(steps)s::bigint - 1) st
"""


def seed(args):
    steps = max(1, args.metric_rows // (args.jobs * METRIC_SHARDS * len(METRIC_NAMES)))
    t0 = time.monotonic()
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        settings = conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone()
        print(f"postgres: fsync={settings[0]} synchronous_commit={settings[1]}", file=sys.stderr)
        with conn.transaction():
            for statement in filter(str.strip, JOBS_SQL.split(";\n")):  # one statement per execute (parameters)
                conn.execute(statement, {"jobs": args.jobs, "workers": SEED_WORKERS})
        jobs_s = time.monotonic() - t0
        shards = conn.execute("SELECT count(*) FROM tessera_shards").fetchone()[0]
        print(f"seeded {args.jobs:,} jobs, {shards:,} shards in {jobs_s:.1f} s", file=sys.stderr)
        conn.execute("SET session_replication_role = replica")  # FK triggers off for the bulk load only
        conn.execute("SET maintenance_work_mem = '256MB'")
        rows, first, stopped = 0, 1, False
        t1 = time.monotonic()
        while first <= args.jobs:
            last = min(args.jobs, first + JOB_CHUNK - 1)
            with conn.transaction():
                cur = conn.execute(METRICS_SQL, {"first": first, "last": last, "shards": METRIC_SHARDS,
                                                 "names": METRIC_NAMES, "steps": steps})
                rows += cur.rowcount
            first = last + 1
            el = time.monotonic() - t1
            if first <= args.jobs and el > args.budget:
                stopped = True
                break
            if (first - 1) % (JOB_CHUNK * 8) == 0:
                print(f"  {rows:,} metric rows in {el:.0f} s", file=sys.stderr)
        metrics_s = time.monotonic() - t1
        conn.execute("RESET session_replication_role")
        print(f"seeded {rows:,} metric rows ({steps} steps x {len(METRIC_NAMES)} names x {METRIC_SHARDS} shards "
              f"for jobs 1-{first - 1}) in {metrics_s:.1f} s"
              + (f"; stopped at the --budget of {args.budget:.0f} s" if stopped else ""), file=sys.stderr)
        t2 = time.monotonic()
        for table in ("tessera_workers", "tessera_jobs", "tessera_shards", "tessera_metrics"):
            conn.execute(f"VACUUM ANALYZE {table}")
        vacuum_s = time.monotonic() - t2
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        print(f"VACUUM ANALYZE in {vacuum_s:.1f} s; database size {size}", file=sys.stderr)
    out = {"jobs": args.jobs, "shards": shards, "metric_rows": rows, "metric_rows_asked": args.metric_rows,
           "metric_jobs": first - 1, "stopped_at_budget": stopped, "seed_jobs_seconds": round(jobs_s, 1),
           "seed_metrics_seconds": round(metrics_s, 1), "vacuum_seconds": round(vacuum_s, 1), "database_size": size,
           "fsync": settings[0], "synchronous_commit": settings[1]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


# --- measure ---

def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")  # nearest rank


def read_loop(client, jobs, metric_jobs, until, rng):
    lat = {"status": [], "status JOB": [], "metrics JOB --limit 1000": []}
    sizes = {k: [] for k in lat}
    errors = []
    kinds = list(lat)
    i = 0
    while not until():
        kind = kinds[i % 3]
        i += 1
        if kind == "status":
            method, body = "status", {"limit": 50}
        elif kind == "status JOB":
            method, body = "status", {"job": rng.randint(1, jobs), "events": False}
        else:
            method, body = "metrics", {"job": rng.randint(1, metric_jobs), "limit": 1000}
        t = time.perf_counter()
        try:
            status, reply, size = client.call(method, body, timeout=30)
        except TimeoutError as e:
            errors.append(str(e))
            continue
        ms = (time.perf_counter() - t) * 1e3
        if status != 0:
            errors.append(f"{kind}: status {status}: {reply}")
            continue
        if kind == "metrics JOB --limit 1000" and not reply["metrics"]:
            errors.append(f"{kind}: empty reply for {body}")
        lat[kind].append(ms)
        sizes[kind].append(size)
    return {k: {"n": len(v), "p50_ms": round(pct(v, 0.5), 2), "p99_ms": round(pct(v, 0.99), 2),
                "max_ms": round(max(v), 2) if v else None, "mean_ms": round(statistics.fmean(v), 2) if v else None,
                "reply_bytes": int(statistics.fmean(sizes[k])) if sizes[k] else 0}
            for k, v in lat.items()}, errors


def dispatch_cmd(args):
    return [f"{args.bin}/tessera-bench", "dispatch", "--coordinator", args.endpoint, "--shards", str(args.shards),
            "--latency-jobs", "10", "--stream-shards", "0", "--timeout", "600"]


def measure(args):
    seeded = json.load(open(args.seed_json)) if args.seed_json and os.path.exists(args.seed_json) else {}
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        jobs = conn.execute("SELECT count(*) FROM tessera_jobs WHERE name LIKE 'seed-%'").fetchone()[0]
        metric_jobs = conn.execute("SELECT coalesce(max(job_id), 0) FROM tessera_metrics WHERE job_id <= %s",
                                   (jobs,)).fetchone()[0]
        settings = conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone()
        t_start = conn.execute("SELECT now()").fetchone()[0]
    rng = random.Random(9)
    client = bw.Client(args.endpoint)
    out = {"machine": f"{bw.cpu_model()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "fsync": settings[0], "synchronous_commit": settings[1], "seed": seeded, "seeded_jobs": jobs,
           "metric_jobs": metric_jobs}

    load = bw.loadavg()
    r = subprocess.run(dispatch_cmd(args), capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        sys.exit(f"tessera-bench dispatch failed: {r.stderr[-500:]}")
    out["dispatch_alone"] = dict(json.loads(r.stdout), load=load)
    print(f"dispatch alone: {out['dispatch_alone']['throughput_shards_per_s']:,.0f} shards/s (load {load})", file=sys.stderr)

    load = bw.loadavg()
    end = time.monotonic() + args.idle_seconds
    out["idle"], errs = read_loop(client, jobs, metric_jobs, lambda: time.monotonic() > end, rng)
    out["idle"]["load"] = load
    out["idle_errors"] = errs[:20]
    print(f"reads, nothing dispatching: {out['idle']}", file=sys.stderr)

    load = bw.loadavg()
    bench = subprocess.Popen(dispatch_cmd(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # past the submit of its warm-up job
    out["under_dispatch"], errs = read_loop(client, jobs, metric_jobs, lambda: bench.poll() is not None, rng)
    stdout, stderr = bench.communicate()
    if bench.returncode != 0:
        sys.exit(f"tessera-bench dispatch failed: {stderr[-500:]}")
    out["under_dispatch"]["load"] = load
    out["under_dispatch_errors"] = errs[:20]
    out["dispatch_with_reads"] = json.loads(stdout)
    print(f"reads under dispatch: {out['under_dispatch']}", file=sys.stderr)

    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        out["worker_lost_events"] = conn.execute(
            "SELECT count(*) FROM tessera_events WHERE kind = 'worker.lost' AND at >= %s", (t_start,)).fetchone()[0]
        out["workers_by_state"] = dict(conn.execute(
            "SELECT state::text, count(*) FROM tessera_workers WHERE name NOT LIKE 'seed-%' GROUP BY state").fetchall())
    client.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print_report(out)


def print_report(o):
    s = o.get("seed", {})
    print(f"machine: {o['machine']}; {o['date']}; postgres fsync={o['fsync']} synchronous_commit={o['synchronous_commit']}")
    if s:
        print(f"seeded: {s['jobs']:,} jobs, {s['shards']:,} shards in {s['seed_jobs_seconds']} s; "
              f"{s['metric_rows']:,} metric rows in {s['seed_metrics_seconds']} s"
              + (" (stopped at the time budget)" if s.get("stopped_at_budget") else "")
              + f"; VACUUM ANALYZE {s['vacuum_seconds']} s; database {s['database_size']}")
    da, dw = o["dispatch_alone"], o["dispatch_with_reads"]
    print(f"dispatch of {da['shards']:,} noop shards: alone {da['throughput_shards_per_s']:,.0f}/s (load {da['load']}), "
          f"with the read loop {dw['throughput_shards_per_s']:,.0f}/s")
    print()
    print(f"{'request':<26} {'idle n':>6} {'p50':>7} {'p99':>7} | {'dispatching n':>13} {'p50':>7} {'p99':>7} {'max':>7} {'reply B':>8}")
    for k in o["idle"]:
        if k == "load":
            continue
        a, b = o["idle"][k], o["under_dispatch"][k]
        print(f"{k:<26} {a['n']:>6} {a['p50_ms']:>7.2f} {a['p99_ms']:>7.2f} | {b['n']:>13} {b['p50_ms']:>7.2f} "
              f"{b['p99_ms']:>7.2f} {b['max_ms'] or 0:>7.2f} {b['reply_bytes']:>8,}")
    print(f"(ms; load at the start: idle {o['idle']['load']}, dispatching {o['under_dispatch']['load']})")
    print(f"target p99 < 50 ms; worker.lost events during the run: {o['worker_lost_events']}; "
          f"workers by state: {o['workers_by_state']}; errors: {o['idle_errors'] + o['under_dispatch_errors'] or 'none'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["seed", "measure"])
    p.add_argument("--pg-url", required=True)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--metric-rows", type=int, default=10_000_000)
    p.add_argument("--budget", type=float, default=180, help="seed: seconds for the metric rows")
    p.add_argument("--endpoint")
    p.add_argument("--bin")
    p.add_argument("--shards", type=int, default=20_000)
    p.add_argument("--idle-seconds", type=float, default=10)
    p.add_argument("--seed-json", help="measure: the seed step's --json, to include in the report")
    p.add_argument("--json")
    args = p.parse_args()
    seed(args) if args.step == "seed" else measure(args)


if __name__ == "__main__":
    main()
