#!/usr/bin/env python3
"""`tessera metrics JOB --tensorboard DIR`, read back by TensorBoard's own reader.

Starts `tessera dev` (its own throwaway PostgreSQL, one worker), runs a 2-shard noop job with 60,000 points a shard
(120,000 in all: the export reads more than one 100,000-point page) and a short RLOO job (many metric names, with
slashes), exports each with --tensorboard, and loads every run with tensorboard's EventAccumulator, which checks each
record's masked CRC-32C. Passes when each run holds exactly the job's points of its shard: the same tags, steps in
order, and each value the float32 nearest the stored double (`tessera metrics --shard N --jsonl`). Also checks that
exporting again replaces the files (no second copy of each point).

    ops/.venv-test/bin/python ops/interop/tensorboard_check.py [--tessera .build/debug/tessera]

Needs the `tensorboard` package (ops/test installs it into ops/.venv-test).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from tensorboard.backend.event_processing import event_accumulator


def say(msg):
    print(f"tensorboard-check: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fail(Exception):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--tessera", default=os.path.join(root, ".build/debug/tessera"))
    args = ap.parse_args()
    tessera = args.tessera
    work = tempfile.mkdtemp(prefix="tessera-tb-")
    os.chmod(work, 0o755)  # the embedded PostgreSQL runs as the postgres user when we are root
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, TESSERA_COORDINATOR=endpoint)
    dev = subprocess.Popen(
        [tessera, "dev", "--bind", endpoint, "--workers", "1", "--data-dir", f"{work}/dev"],
        stdout=open(f"{work}/dev.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def cli(*argv, stdin=None):
        r = subprocess.run([tessera, *argv], env=env, capture_output=True, text=True, input=stdin)
        if r.returncode != 0:
            raise Fail(f"tessera {' '.join(argv)} exited {r.returncode}: {r.stderr[-2000:]}")
        return r

    try:
        deadline = time.monotonic() + 120
        while subprocess.run([tessera, "workers", "--json"], env=env, capture_output=True,
                             text=True).stdout.count('"alive"') < 1:
            if dev.poll() is not None or time.monotonic() > deadline:
                raise Fail("tessera dev did not start:\n" + open(f"{work}/dev.log").read()[-3000:])
            time.sleep(0.2)
        noop = cli("submit", "-", stdin="name: tb-noop\nkind: sampling\nalgorithm: noop\nseed: 1\nshards: 2\n"
                                        "params: {metrics: 60000}\n").stdout.strip()
        rloo = cli("submit", os.path.join(root, "examples/rl-rloo-toy.yaml"), "--set", "params.steps=40",
                   "--set", "name=tb-rloo").stdout.strip()
        for job in (noop, rloo):
            cli("wait", job, "--timeout", "600")
        failures = 0
        for job in (noop, rloo):
            status = json.loads(cli("status", job, "--json").stdout)
            shards = len(status["shards"])
            out = f"{work}/tb-{job}"
            cli("metrics", job, "--tensorboard", out)
            again = cli("metrics", job, "--tensorboard", out)  # must replace, not add
            say(again.stderr.strip())
            for s in range(shards):
                run = f"{out}/shard-{s}"
                files = [f for f in os.listdir(run) if "tfevents" in f]
                if len(files) != 1:
                    raise Fail(f"job {job} shard {s}: {len(files)} event files after two exports: {files}")
                expected = {}
                for line in cli("metrics", job, "--shard", str(s), "--jsonl").stdout.splitlines():
                    p = json.loads(line)
                    expected.setdefault(p["name"], []).append((p["step"], p["value"]))
                acc = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
                acc.Reload()
                tags = sorted(acc.Tags()["scalars"])
                if tags != sorted(expected):
                    raise Fail(f"job {job} shard {s}: tags {tags} != {sorted(expected)}")
                points = 0
                for tag in tags:
                    got = [(e.step, e.value) for e in acc.Scalars(tag)]
                    want = sorted(expected[tag])
                    if [g[0] for g in got] != [w[0] for w in want]:
                        raise Fail(f"job {job} shard {s} {tag}: steps differ ({len(got)} vs {len(want)} points)")
                    for (step, value), (_, stored) in zip(got, want):
                        # TensorBoard hands back simple_value, a float32, as a Python float: it must be exactly the
                        # float32 nearest the stored double (NaN for NaN).
                        nearest = float(np.float32(stored)) if stored is not None else float("nan")
                        same = (np.isnan(value) and np.isnan(nearest)) or value == nearest
                        if not same:
                            failures += 1
                            if failures <= 5:
                                say(f"job {job} shard {s} {tag} step {step}: {value!r} != float32({stored!r})")
                    points += len(got)
                say(f"job {job} shard {s}: {len(tags)} tag(s), {points} point(s) read back by TensorBoard's reader")
        if failures:
            raise Fail(f"{failures} value(s) differ")
        say("PASS")
        return 0
    except Fail as e:
        say(f"FAIL: {e}")
        return 1
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGINT)
            try:
                dev.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
