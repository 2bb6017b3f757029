"""The whole `deepclust cluster` on all 2,205 EU-moths images (k = 200) with each runtime,
alternating rounds, each run with an empty embedding cache of its own: wall time, the share
of it in decoding + forward (the embedding), clustering and writing, and whether the
metrics agree to 3 decimals.

    python benchmarks/cluster_runtime.py [--rounds 2] [--runtimes torch auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from moths import IMAGES


def run(runtime: str, out: str) -> dict:
    cache = os.path.join(out, "fresh-cache")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepclust", "-q", "cluster", IMAGES, "--out", out, "--labels", "folders",
                    "--n-clusters", "200", "--runtime", runtime, "--cache", cache, "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    return {"wall": wall, **summary["timings_seconds"], "metrics": summary["metrics"],
            "resolved": summary["resolved"].get("runtime")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "auto"])
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {r: [] for r in args.runtimes}
    with tempfile.TemporaryDirectory(prefix="deepclust-e2e-") as tmp:
        for i in range(args.rounds):
            for runtime in (args.runtimes if i % 2 == 0 else args.runtimes[::-1]):
                r = run(runtime, os.path.join(tmp, f"{runtime}-{i}"))
                results[runtime].append(r)
                print(f"round {i} {runtime:<12} ({r['resolved']}): wall {r['wall']:.1f} s, embed {r['embed']:.1f}, "
                      f"cluster {r['cluster']:.1f}, write {r['write']:.2f}; ARI {r['metrics']['ARI']:.4f}", flush=True)
    base = args.runtimes[0]
    for runtime in args.runtimes:
        rows = results[runtime]
        wall = min(r["wall"] for r in rows)
        best = min(rows, key=lambda r: r["wall"])
        shares = {k: best[k] / best["wall"] for k in ("embed", "cluster", "write")}
        rest = 1 - sum(shares.values())
        same = all(round(r["metrics"][m], 3) == round(results[base][0]["metrics"][m], 3)
                   for r in rows for m in ("ACC", "NMI", "ARI"))
        print(f"{runtime:<12} best wall {wall:.1f} s, {min(r['wall'] for r in results[base]) / wall:.2f}x {base}; "
              f"shares: embed (decode + forward) {shares['embed']:.0%}, cluster {shares['cluster']:.0%}, "
              f"write {shares['write']:.1%}, start-up and the rest {rest:.0%}; metrics equal to 3 decimals: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
