#!/usr/bin/env python3
"""Data-parallel CPU training against one process, on the same machine, data, split and seed:
train_sasrec once as one process with every core's threads, then under mpirun as N ranks
sharing the cores (one thread each by default). Prints one markdown table (train tokens/s, time
per epoch, the final validation MRR@10, each layout's ratio to the one-process run) and writes
it to --out.

The ranks draw different dropout masks from the one-process run (rank 0 draws the same), so the
accuracy columns agree within run-to-run noise, not exactly; tests/mpi checks exactness with
dropout off.

Configurations: those of bench/compare_pytorch.py (ml1m, games), plus `default`, the embedded
synthetic dataset (no files needed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from compare_pytorch import CONFIGS as PYTORCH_CONFIGS  # noqa: E402

CONFIGS = dict(PYTORCH_CONFIGS)
CONFIGS["default"] = {"data": None, "epochs": 3, "args": ""}


def run_logged(cmd: list[str], env: dict[str, str], log: str, who: str) -> None:
    """Runs cmd with its output appended to log (after the command line); exits naming `who`
    and the log when it fails."""
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{who}: the run failed (exit {rc}); see {log}")


def run(cmd: list[str], env: dict[str, str], log: str) -> dict:
    """Runs one training command; returns its metrics JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "metrics.json")
        run_logged(cmd + ["--metrics-json", out], env, log, "data_parallel.py")
        with open(out) as f:
            return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, help="epochs per run (default: the config's)")
    p.add_argument("--ranks", default="2", help="comma-separated rank counts to run (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="cores to use: the one-process run's threads, shared by the ranks")
    p.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "examples", "train_sasrec"))
    p.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=os.path.join(ROOT, "cache", "data_parallel.md"))
    a = p.parse_args()

    cfg = CONFIGS[a.config]
    epochs = a.epochs if a.epochs is not None else cfg["epochs"]
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"data_parallel.py: {a.bin} is missing: build it first (cmake --build build)")
    base = [a.bin, "--epochs", str(epochs), "--eval-every", "0", "--no-progress",
            "--seed", str(a.seed)] + shlex.split(cfg["args"])
    if cfg["data"]:
        data = os.path.join(a.data_root, cfg["data"])
        if not os.path.isdir(data):
            sys.exit(f"data_parallel.py: {data} is missing (see ../shared/data/README.md)")
        base += ["--data", data]
    env = dict(os.environ)
    # OpenMPI refuses root and more ranks than cores unless told; harmless to other MPIs.
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_rmaps_base_oversubscribe": "1"})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    log = os.path.splitext(a.out)[0] + ".log"
    open(log, "w").close()

    rows = []
    one = run(base + ["--threads", str(a.threads)], env, log)
    rows.append((f"1 process x {a.threads} threads", one))
    for n in (int(x) for x in a.ranks.split(",")):
        per = max(1, a.threads // n)
        # Unbound: OpenMPI's default binds each of 2 ranks to one core, wrong for > 1 thread.
        cmd = [a.mpirun, "-np", str(n), "--bind-to", "none"] + base + ["--threads", str(per)]
        rows.append((f"{n} ranks x {per} thread{'s' if per > 1 else ''}", run(cmd, env, log)))

    ref = one["train_tokens_per_second"]
    lines = [
        f"`bench/data_parallel.py {a.config}` on {platform.node()} ({os.cpu_count()} cores), "
        f"{dt.date.today()}: {epochs} epoch(s), seed {a.seed}, log {os.path.relpath(log, ROOT)}",
        "",
        "| layout | train tokens/s | s/epoch | valid MRR@10 | valid HR@10 | vs one process |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        tps = m["train_tokens_per_second"]
        lines.append(f"| {name} | {tps:,.0f} | {m['train_seconds'] / epochs:.2f} | "
                     f"{m['valid']['mrr@10']:.4f} | {m['valid']['hr@10']:.4f} | "
                     f"{tps / ref:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    with open(a.out, "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
