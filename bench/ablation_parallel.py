#!/usr/bin/env python3
"""The ablation table's wall time three ways on the same machine, data and seeds: one process
with every core's threads; under mpirun as N ranks that train each run data-parallel
(`--parallel steps`); and as N ranks that each train whole runs alone (`--parallel runs`).
Prints one markdown table (wall seconds from each table's JSON, the ratio to one process, the
mean MRR@10 of each row) and writes it to --out.

The runs-mode table equals the one a single process with the ranks' thread count writes (the
ctest "ablation --parallel runs under mpirun equals one process" checks that); against the
one-process run with more threads it agrees within run-to-run noise only, as thread count
changes the order of sums.

Default: the embedded synthetic dataset (no files needed), four variants, two seeds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from data_parallel import run_logged  # noqa: E402


def run(cmd: list[str], env: dict[str, str], log: str, out: str) -> dict:
    """Runs one ablation; returns its table's JSON."""
    run_logged(cmd + ["--out", out], env, log, "ablation_parallel.py")
    with open(out + ".json") as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--only", default="train_sasrec,train_ours,train_ours_random,train_learned_pe",
                   help="the table's rows (ablation --only)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="cores to use: the one-process run's threads, shared by the ranks")
    p.add_argument("--extra", default="", help="more ablation flags, e.g. '--data DIR'")
    p.add_argument("--out", default=os.path.join(ROOT, "cache", "bench", "ablation_parallel.md"))
    a = p.parse_args()

    exe = os.path.join(a.build, "examples", "ablation")
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if not os.path.exists(exe):
        sys.exit(f"ablation_parallel.py: {exe} not built")
    if mpirun is None:
        sys.exit("ablation_parallel.py: no mpirun on PATH (scripts/install_deps.sh installs OpenMPI)")
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    base = [exe, "--only", a.only, "--seeds", a.seeds, "--epochs", str(a.epochs),
            "--no-progress"] + shlex.split(a.extra)
    per_rank = max(1, a.threads // a.ranks)
    threads = lambda n: f"{n} thread" + ("" if n == 1 else "s")  # noqa: E731
    launch = [mpirun, "-np", str(a.ranks), "--bind-to", "none"]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    log = a.out + ".log"
    open(log, "w").close()
    layouts = [
        (f"1 process × {threads(a.threads)}", base + ["--threads", str(a.threads)]),
        (f"{a.ranks} ranks × {threads(per_rank)}, each run data-parallel",
         launch + base + ["--threads", str(per_rank), "--parallel", "steps"]),
        (f"{a.ranks} ranks × {threads(per_rank)}, each rank its own runs",
         launch + base + ["--threads", str(per_rank), "--parallel", "runs"]),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cmd) in enumerate(layouts):
            results.append((name, run(cmd, env, log, os.path.join(tmp, f"t{i}"))))
    rows = [r["binary"] for r in results[0][1]["rows"]]
    ref = results[0][1]["wall_seconds"]
    head = "| layout | wall s | speed-up | " + " | ".join(f"{b} MRR@10" for b in rows) + " |"
    lines = [
        f"ablation {a.only}, seeds {a.seeds}, {a.epochs} epochs {a.extra}".rstrip(),
        f"{platform.node()}, {os.cpu_count()} cores, {dt.date.today()}",
        "",
        head,
        "|" + "---|" * (3 + len(rows)),
    ]
    for name, js in results:
        mrr = {r["binary"]: r["mrr@10_mean"] for r in js["rows"]}
        w = js["wall_seconds"]
        lines.append(f"| {name} | {w:.1f} | {ref / w:.2f}× | " +
                     " | ".join(f"{mrr[b]:.4f}" for b in rows) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
