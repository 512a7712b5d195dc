#!/usr/bin/env python3
"""safetensors interop between Tessera (Swift) and Python, both ways, plus a malformed-file corpus.

Command line (from the repository root; the venv needs only numpy and safetensors):
    python3 -m venv ops/.venv-interop && ops/.venv-interop/bin/pip install numpy safetensors
    ops/.venv-interop/bin/python ops/interop/safetensors_interop.py --tessera-bench <path>/tessera-bench

where <path>/tessera-bench is a built `tessera-bench` (e.g. .build/debug/tessera-bench). Exits non-zero if any
check fails; the last line is always "N passed, N failed".

Checks:
  1. Tessera -> Python: `tessera-bench interop safetensors-write DIR` writes files that safetensors.numpy.load_file
     and a 10-line plain-numpy reader both load with the expected names, dtypes, shapes, values and metadata; the
     header is padded to 8 bytes; and Tessera's bytes equal Python's own serialisation of the same tensors.
  2. Python -> Tessera: files written by safetensors.numpy.save_file (every dtype numpy has, scalars, empty
     tensors, unicode names, metadata) are read by `tessera-bench interop safetensors-read` with the same values.
  3. Malformed corpus: truncated files, bad lengths, bad JSON, overlapping/holey offsets, wrong sizes, duplicate
     keys, unknown dtypes... are each rejected with exit status 1 and a `safetensors <code>:` message (no crash).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save, save_file

PASSED = 0
FAILED = 0


def check(name, cond, detail=""):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok   {name}")
    else:
        FAILED += 1
        print(f"FAIL {name} {detail}")


def value(i):
    return ((i * 37) % 101 - 50) / 8


def plain_numpy_read(path):
    """The 10-line reader of WORKLOADS.md §7: no safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    kinds = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1"}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out, meta, n


def tessera_read(bench, path):
    r = subprocess.run([bench, "interop", "safetensors-read", path], capture_output=True, text=True)
    return r


def parse_dump(stdout):
    tensors, meta = {}, None
    for line in stdout.splitlines():
        obj = json.loads(line)
        if "__metadata__" in obj:
            meta = obj["__metadata__"]
        else:
            tensors[obj["name"]] = obj
    return tensors, meta


def swift_to_python(bench, tmp):
    r = subprocess.run([bench, "interop", "safetensors-write", tmp], capture_output=True, text=True)
    check("tessera writes its files", r.returncode == 0, r.stderr)
    if r.returncode != 0:
        return
    path = os.path.join(tmp, "tessera.safetensors")
    expected = {
        "layers.0.weight": np.array([value(i) for i in range(24)], dtype=np.float32).reshape(4, 6),
        "layers.0.bias": np.array([value(i) for i in range(4)], dtype=np.float32),
        "schedule.betas": np.array([value(i) for i in range(6)], dtype=np.float64).reshape(2, 3),
        "optim.step": np.array(34, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "mask": np.array([0, 1, 2, 254, 255], dtype=np.uint8),
        "idx": np.array([1, -1, 7], dtype=np.int32),
        "nonascii.é": np.array([1.5], dtype=np.float32),
    }
    loaded = load_file(path)
    check("safetensors.numpy loads the same names", sorted(loaded) == sorted(expected), sorted(loaded))
    for name, want in expected.items():
        got = loaded.get(name)
        ok = got is not None and got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        check(f"safetensors.numpy value {name}", ok, f"{got!r} vs {want!r}")
    plain, meta, n = plain_numpy_read(path)
    check("header length is a multiple of 8", n % 8 == 0, n)
    for name, want in expected.items():
        check(f"plain numpy value {name}", name in plain and np.array_equal(plain[name], want)
              and plain[name].dtype == want.dtype)
    check("metadata survives", meta == {"format": "worker-ckpt/1", "config": "{\"lr\": 0.001, \"note\": \"ü\\n\"}",
                                         "seed": "42"}, meta)
    # Byte-for-byte: Tessera's writer orders and pads exactly as the Rust writer behind safetensors.numpy.save.
    with open(os.path.join(tmp, "tessera_canonical.safetensors"), "rb") as f:
        ours = f.read()
    theirs = save(expected, metadata={"format": "pt"})
    check("bytes identical to safetensors.numpy.save", ours == theirs,
          f"\n ours  {ours[:160]!r}\n theirs {theirs[:160]!r}")


def python_to_swift(bench, tmp):
    rng = np.random.default_rng(7)
    tensors = {
        "layers.0.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(5).astype(np.float32),
        "target.mu": rng.standard_normal((8, 2)),
        "optim.step": np.array(12345678901, dtype=np.int64),
        "scalar.f32": np.array(3.25, dtype=np.float32),
        "zero.size": np.zeros((2, 0, 4), dtype=np.float64),
        "bytes": np.arange(7, dtype=np.uint8),
        "ints": np.array([-3, 0, 2**31 - 1], dtype=np.int32),
        "half": np.array([1.0, -2.5], dtype=np.float16),
        "uni名": np.array([np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32),
    }
    meta = {"format": "worker-ckpt/1", "step": "17", "note": "tab\tquote\"backslash\\ é 😀"}
    path = os.path.join(tmp, "python.safetensors")
    save_file(tensors, path, metadata=meta)
    r = tessera_read(bench, path)
    check("tessera reads a Python-written file", r.returncode == 0, r.stderr)
    if r.returncode != 0:
        return
    got, got_meta = parse_dump(r.stdout)
    check("names match", sorted(got) == sorted(tensors), sorted(got))
    check("metadata matches", got_meta == meta, got_meta)
    dt = {np.float32: "F32", np.float64: "F64", np.int64: "I64", np.uint8: "U8", np.int32: "I32", np.float16: "F16"}
    for name, arr in tensors.items():
        g = got.get(name)
        if g is None:
            check(f"tensor {name}", False, "missing")
            continue
        ok = g["dtype"] == dt[arr.dtype.type] and g["shape"] == list(arr.shape)
        if g["dtype"] in ("F32", "F64", "I64"):
            vals = np.array(g["values"], dtype=arr.dtype).reshape(arr.shape) if arr.size else np.zeros(arr.shape, arr.dtype)
            ok = ok and vals.tobytes() == arr.tobytes()  # bitwise, so -0.0 and the subnormal count
        else:
            ok = ok and bytes(g["values"]) == arr.tobytes()
        check(f"tensor {name} ({g['dtype']}{g['shape']})", ok, g)


def header_file(header, data=b""):
    h = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h + data


def malformed_corpus(bench, tmp):
    good_header = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    f32x2 = np.array([1, 2], dtype=np.float32).tobytes()
    valid = save({"w": np.array([1, 2, 3], dtype=np.float32)}, metadata={"k": "v"})
    corpus = {
        "empty file": (b"", "headerTooSmall"),
        "short length": (b"\x08\x00\x00", "headerTooSmall"),
        "header too large": (struct.pack("<Q", 100_000_001), "headerTooLarge"),
        "length past end": (struct.pack("<Q", 64) + b"{}", "invalidHeaderLength"),
        "invalid utf-8": (header_file(b'{"\xff":1}'), "invalidHeaderUTF8"),
        "leading space": (header_file(" {}"), "invalidHeaderStart"),
        "not an object": (header_file("[1,2]"), "invalidHeaderStart"),
        "bad json": (header_file('{"w":'), "invalidJSON"),
        "trailing garbage": (header_file("{} x"), "invalidJSON"),
        "duplicate key": (header_file('{"w":{},"w":{}}'), "duplicateKey"),
        "missing dtype": (header_file('{"w":{"shape":[2],"data_offsets":[0,8]}}', f32x2), "invalidTensorInfo"),
        "negative dim": (header_file('{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', f32x2),
                         "invalidTensorInfo"),
        "unknown dtype": (header_file('{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}', f32x2), "unknownDtype"),
        "size mismatch": (header_file('{"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}', f32x2),
                          "sizeMismatch"),
        "hole": (header_file('{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', f32x2 + f32x2),
                 "invalidOffsets"),
        "overlap": (header_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', f32x2 + f32x2),
                    "invalidOffsets"),
        "extra bytes": (header_file(good_header, f32x2 + b"\x00"), "incompleteBuffer"),
        "missing bytes": (header_file(good_header, f32x2[:7]), "incompleteBuffer"),
        "metadata not strings": (header_file('{"__metadata__":{"a":1}}'), "invalidMetadata"),
        "shape overflow": (header_file('{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}',
                                       f32x2), "overflow"),
    }
    for cut in (1, 7, 8, 9, 20, len(valid) - 9, len(valid) - 1):
        corpus[f"truncated at {cut} of {len(valid)}"] = (valid[:cut], None)
    for i, (name, (data, code)) in enumerate(corpus.items()):
        path = os.path.join(tmp, f"bad{i}.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        r = tessera_read(bench, path)
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        ok = r.returncode == 1 and msg.startswith("safetensors ") and (code is None or msg.startswith(f"safetensors {code}:"))
        check(f"rejects {name}", ok, f"exit {r.returncode}: {msg!r} (want {code})")
    # A missing file is an I/O error, not a crash.
    r = tessera_read(bench, os.path.join(tmp, "does-not-exist.safetensors"))
    check("missing file is an io error", r.returncode == 1 and "safetensors io:" in r.stderr, r.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera-bench", required=True, help="path to a built tessera-bench executable")
    args = ap.parse_args()
    bench = os.path.abspath(args.tessera_bench)
    if not os.access(bench, os.X_OK):
        print(f"not executable: {bench}")
        print("0 passed, 1 failed")
        return 1
    with tempfile.TemporaryDirectory(prefix="tessera-interop-") as tmp:
        try:
            swift_to_python(bench, tmp)
            python_to_swift(bench, tmp)
            malformed_corpus(bench, tmp)
        except Exception as e:  # an unexpected exception is a failure, reported, not a traceback-only exit
            check("no unexpected exception", False, repr(e))
    print(f"{PASSED} passed, {FAILED} failed")
    return 0 if FAILED == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
