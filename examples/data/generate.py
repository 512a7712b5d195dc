#!/usr/bin/env python3
"""Regenerates the example data files byte for byte (python3, standard library only): run from this directory."""
import json
import math
import random
import struct


def pref_pairs():
    # 1,200 pairs for a toy LM with 4 contexts, vocab 4, length 2, labelled by Bradley-Terry draws on a hidden
    # reward r(x, y) = w_x[y_0] + 0.5 w_x[y_1].
    random.seed(7)
    M, V, L = 4, 4, 2
    w = [[random.gauss(0, 1) for _ in range(V)] for _ in range(M)]

    def r(x, y):
        return sum(w[x][t] * (1.0 if i == 0 else 0.5) for i, t in enumerate(y))

    lines = []
    for _ in range(1200):
        x = random.randrange(M)
        a = [random.randrange(V) for _ in range(L)]
        b = [random.randrange(V) for _ in range(L)]
        while b == a:
            b = [random.randrange(V) for _ in range(L)]
        p = 1 / (1 + math.exp(-(r(x, a) - r(x, b))))
        c, l = (a, b) if random.random() < p else (b, a)
        lines.append(json.dumps({"context": x, "chosen": c, "rejected": l}))
    with open("pref-pairs.jsonl", "w") as f:
        f.write("\n".join(lines) + "\n")


def toy_world():
    # A 4-context, 6-response bandit: F64 reward [4, 6] and reference_logits [4, 6], safetensors written by hand.
    M, V = 4, 6
    reward = [math.sin(1.3 * x + 0.7 * y) * 1.2 + (0.5 if y == (x + 2) % V else 0) for x in range(M) for y in range(V)]
    logits = [math.cos(0.9 * x - 1.1 * y) * 0.7 for x in range(M) for y in range(V)]
    header, blobs, off = {}, b"", 0
    for name, v in [("reference_logits", logits), ("reward", reward)]:
        b = b"".join(struct.pack("<d", a) for a in v)
        header[name] = {"dtype": "F64", "shape": [M, V], "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs += b
    header["__metadata__"] = {"about": "tessera example: a toy bandit brought as a file (examples/rl-rloo-byo.yaml)"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open("toy-world.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blobs)


if __name__ == "__main__":
    pref_pairs()
    toy_world()
