"""The data pipeline alone: training batches per second and memory, image files read lazily (grain) against
the same pixels held in memory.

    python scripts/benchmark_data.py --folder=out/png100k --n=100000 --size=16     # makes the folder once
    python scripts/benchmark_data.py --folder=out/png100k --steps=200 --batch=128

The folder gets ``--n`` random grey ``--size`` x ``--size`` PNGs (a train/ and a test/ split; never
rewritten once there). Each configuration runs in a process of its own, so that its memory is its own:
the resident memory of the process and its worker processes while batches flow, and how much of it came
with the data set (the rise from before it was opened; the process's peak is set by importing JAX and
is printed to the JSON only): the lazy folder data set with 0 (two threads), 1 and 2 worker processes, and the
in-memory ``.npz`` of the same pixels (written beside the folder). Batches are made exactly as training
makes them (``Dataset.iterate``: shuffled, flipped, dequantised), without a device; the first
``--warmup`` calls are not timed. Rounds alternate the configurations (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from sde_lib import cli
from sde_lib.data import Dataset, load_split


def make_folder(folder: str, n: int, size: int) -> None:
    """``n`` random grey PNGs (discs of random position and radius), 90% in train/, 10% in test/."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split, count in (("train", n - n // 10), ("test", n // 10)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        for i in range(count):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(2, size / 2)]
            image = (255 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(folder, split, f"{i:07d}.png"))


def tree_rss_mib() -> float:
    """Resident memory of this process and all its descendants (grain's worker processes), in MiB."""
    parent, rss = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        parent[int(pid)] = int(fields["PPid"])
        rss[int(pid)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, frontier = {os.getpid()}, {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - tree
        tree |= frontier
    return sum(rss.get(p, 0) for p in tree) / 1024


def measure(spec: dict, batch: int, steps: int, warmup: int, workers: int) -> dict:
    """Images per second of ``steps`` training batches after ``warmup``, and memory: this process's peak
    (``ru_maxrss``, which the imports dominate) and the resident memory of the process and its workers
    while batches flow, above what it was before the data set was opened."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = tree_rss_mib()
    start = time.perf_counter()
    ds = Dataset(spec, "train", batch, seed=0, workers=workers)
    batches = ds.iterate(0)
    for _ in range(warmup):
        next(batches)
    opened = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        x = next(batches)
        times.append(time.perf_counter() - t)
    assert x.shape == (batch, *ds.dims)
    during = tree_rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"images_per_s": batch * steps / sum(times), "median_batch_ms": 1e3 * statistics.median(times),
            "open_and_warmup_s": opened, "peak_rss_mib": peak / 1024, "rss_rise_mib": (peak - base) / 1024,
            "tree_rss_mib": during, "data_rss_mib": during - before, "examples": ds.num_examples}


def main(argv=None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", required=True, help="the PNG folder (made if absent)")
    p.add_argument("--n", type=int, default=100_000, help="images to make (only when the folder is made)")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="out/benchmark_data.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process's one configuration (JSON)
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        if a.one:  # a child process: one configuration, its result as JSON on stdout
            cfg = json.loads(a.one)
            print(json.dumps(measure(cfg["spec"], a.batch, a.steps, a.warmup, cfg["workers"])))
            return
        if not os.path.isdir(a.folder):
            t = time.perf_counter()
            make_folder(a.folder, a.n, a.size)
            print(f"made {a.n} PNGs in {a.folder} ({time.perf_counter() - t:.0f} s)")
        folder_spec = {"dataset": "folder", "path": a.folder, "image_size": a.size, "num_channels": 1,
                       "random_flip": True, "uniform_dequantization": True}
        npz = a.folder.rstrip("/") + ".npz"
        if not os.path.isfile(npz):
            np.savez(npz, **{s: load_split(folder_spec, s)[:] for s in ("train", "test")})
        memory_spec = {**folder_spec, "dataset": "npz", "path": npz, "levels": 256}
        configs = [("files, 2 threads", folder_spec, 0), ("files, 1 worker", folder_spec, 1),
                   ("files, 2 workers", folder_spec, 2), ("in memory (.npz)", memory_spec, 0)]
        rows = {name: [] for name, _, _ in configs}
        for _ in range(a.rounds):
            for name, spec, workers in configs:
                child = [sys.executable, os.path.abspath(__file__), f"--folder={a.folder}", f"--batch={a.batch}",
                         f"--steps={a.steps}", f"--warmup={a.warmup}",
                         f"--one={json.dumps({'spec': spec, 'workers': workers})}"]
                r = subprocess.run(child, capture_output=True, text=True)
                if r.returncode:
                    raise ValueError(f"{name}: {r.stderr.strip().splitlines()[-1]}")
                rows[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{rows[configs[0][0]][0]['examples']} training images of {a.size} x {a.size}, batch {a.batch}, "
          f"{a.steps} timed calls after {a.warmup}, median of {a.rounds} alternating rounds")
    print("| data | images/s | median batch (ms) | open + warm-up (s) | resident, with workers (MiB) | "
          "of it for the data (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for name, results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        summary[name] = med
        print(f"| {name} | {med['images_per_s']:.0f} | {med['median_batch_ms']:.1f} | {med['open_and_warmup_s']:.1f} "
              f"| {med['tree_rss_mib']:.0f} | {med['data_rss_mib']:.0f} |")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "rows": rows, "median": summary}, f, indent=1)


if __name__ == "__main__":
    main()
