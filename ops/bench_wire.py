"""Shared pieces of ops/bench_workers.py and ops/bench_reads.py: the protocol v1 frames (encoded by
protocol/fixtures/generate.py, the independent Python encoder, imported rather than copied), a REQUEST client,
and /proc readers for CPU time and peak RSS.
"""
import importlib.util
import json
import os
import struct
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tessera_fixtures_generate", ROOT / "protocol/fixtures/generate.py")
wire = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wire)  # defines functions and constants only; main() runs under __main__

TYPE_NAMES = {code: name for name, code in wire.TYPES.items()}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def frames(type_name, message):
    """Protocol frames as a DEALER sends them: [empty delimiter, header, body(, blob)]."""
    return [b""] + wire.frames_of(type_name, message)


def ready(name, slots, capabilities, host="sim"):
    return frames("READY", {"protocolVersion": 1, "workerName": name, "host": host, "slots": slots,
                            "capabilities": capabilities, "running": []})


def heartbeat(credits):
    return frames("HEARTBEAT", {"credits": credits, "progress": []})


def disconnect(reason):
    return frames("DISCONNECT", {"reason": reason})


def message_type(received):
    """Type name of a frame set received on a DEALER ([empty, header, body, ...]); 'MALFORMED' if not v1."""
    if len(received) < 3 or len(received[1]) != 8 or received[1][:2] != b"TS":
        return "MALFORMED"
    return TYPE_NAMES.get(received[1][4], f"0x{received[1][4]:02x}")


def error_code(received):
    return struct.unpack_from("<H", received[2], 0)[0]


class Client:
    """A CLI client: one DEALER, one REQUEST at a time (SPEC.md §6.8), as Sources/tessera/Client.swift does."""

    def __init__(self, endpoint, context=None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        self.socket.connect(endpoint)
        self.next_id = 1

    def call(self, method, body=None, timeout=30.0):
        """(status, parsed body, reply bytes); raises TimeoutError."""
        rid = self.next_id
        self.next_id += 1
        self.socket.send_multipart(frames("REQUEST", {"requestID": rid, "method": method,
                                                      "body": json.dumps(body or {}, separators=(",", ":"))}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000) + 1):
                raise TimeoutError(f"{method}: no reply within {timeout} s")
            got = self.socket.recv_multipart()
            if message_type(got) != "REPLY":
                continue
            reply_id, status = struct.unpack_from("<QH", got[2], 0)
            if reply_id != rid:
                continue
            (n,) = struct.unpack_from("<I", got[2], 10)
            text = bytes(got[2][14:14 + n])
            return status, json.loads(text), len(text)

    def close(self):
        self.socket.close(0)


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of proc(5), after pid and comm


def children_of(ppid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def postgres_pids(pg_data):
    """The postmaster and its children (backends, checkpointer, walwriter, autovacuum)."""
    with open(Path(pg_data) / "postmaster.pid") as f:
        master = int(f.readline())
    return [master] + children_of(master)


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuWindow:
    """CPU used by groups of processes between start() and stop(), as % of one core. A group is a callable
    returning pids (re-evaluated at both ends, so PostgreSQL backends that come and go are mostly counted)."""

    def __init__(self, groups):
        self.groups = groups

    def _sample(self):
        out = {}
        for name, pids in self.groups.items():
            out[name] = {p: cpu_seconds(p) for p in pids()}
        return out

    def start(self):
        self.t0, self.s0 = time.monotonic(), self._sample()

    def stop(self):
        t1, s1 = time.monotonic(), self._sample()
        wall = t1 - self.t0
        result = {"seconds": round(wall, 2)}
        for name in self.groups:
            used = 0.0
            for pid, end in s1[name].items():
                start = self.s0[name].get(pid, 0.0)
                if end is not None and start is not None:
                    used += end - start
            result[name] = round(100 * used / wall, 1)
        return result


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"
