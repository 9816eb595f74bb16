#!/usr/bin/env python3
"""seqrec against a PyTorch re-implementation of the same SASRec (bench/reference/sasrec_torch.py),
eager and torch.compile, on the same data, split, configuration and seed, one run after another.
Prints one markdown table (throughput, time per epoch, peak memory, accuracy, achieved GFLOP/s,
seqrec's ratios) and writes it to --out. Entry point: scripts/compare_pytorch.sh.

Configurations (--epochs and --threads override the defaults):
  ml1m   ML-1M, --protocol loo, d 64, 2 blocks, 1 head, L 200, FFN 64, dropout 0.2, batch 64,
         lr 0.0015; default 3 epochs
  games  Amazon Games, --protocol holdout --truncate earliest, d 256, 2 blocks, 2 heads, L 20,
         FFN 1024, dropout 0.2, batch 256, lr 0.001; default 1 epoch
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "reference"))

CONFIGS = {
    "ml1m": {"data": "ml-1m", "epochs": 3,
             "args": "--protocol loo --dim 64 --layers 2 --heads 1 --max-len 200 --ffn-dim 64 "
                     "--dropout 0.2 --batch 64 --lr 0.0015"},
    "games": {"data": "amazon18_games", "epochs": 1,
              "args": "--protocol holdout --truncate earliest --dim 256 --layers 2 --heads 2 "
                      "--max-len 20 --ffn-dim 1024 --dropout 0.2 --batch 256 --lr 0.001"},
}


# A small launcher between this script and each run: a child's ru_maxrss also counts the memory
# of the process it was forked from (Linux keeps the pre-exec high-water mark), so forking the
# runs straight from this interpreter would add its own size to theirs. The launcher is a bare
# `python -S` that forks, execs the run and reports wait4's peak RSS of that child, whose floor is
# the launcher's own high-water mark (VmHWM, a few MiB; reported with the table).
_LAUNCHER = """
import os, sys
floor = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            floor = int(line.split()[1])
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {floor}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd, log_path):
    """Runs cmd with stdout+stderr to log_path; returns (exit code, peak RSS bytes of that process,
    launcher floor bytes, wall s)."""
    rss_file = log_path + ".rss"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        rc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, rss_file, *cmd], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - t0
    try:
        with open(rss_file) as f:
            peak, floor = (int(x) * 1024 for x in f.read().split())
    except (OSError, ValueError):
        peak = floor = None
    return rc, peak, floor, wall


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def fmt_mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, default=0, help="0: the configuration's default")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for every implementation (0: all cores, os.cpu_count())")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=42)
    default_root = os.path.join(ROOT, "..", "shared", "data")
    p.add_argument("--data-root", default=os.environ.get("SEQREC_DATA_ROOT", default_root))
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "examples", "train_sasrec"))
    p.add_argument("--python", default=sys.executable, help="interpreter with torch for the "
                                                            "PyTorch runs")
    p.add_argument("--only", default="seqrec,eager,compile",
                   help="comma-separated subset of seqrec, eager, compile")
    p.add_argument("--override", default="",
                   help="extra flags appended to every implementation's command line (the last "
                        "value of a flag wins), e.g. '--max-len 20 --dim 16' for a smoke run")
    p.add_argument("--work", default="", help="folder for logs and JSON (default under cache/)")
    p.add_argument("--out", default="", help="markdown file (default cache/compare_pytorch_"
                                             "<config>_<device>.md)")
    o = p.parse_args()

    cfg = CONFIGS[o.config]
    epochs = o.epochs or cfg["epochs"]
    threads = o.threads or os.cpu_count() or 1
    data = os.path.normpath(os.path.join(o.data_root, cfg["data"]))
    if not os.path.isdir(data):
        sys.exit(f"dataset folder {data} not found (see ../shared/data/README.md; --data-root)")
    only = {x.strip() for x in o.only.split(",") if x.strip()}
    if "seqrec" in only and not os.access(o.bin, os.X_OK):
        sys.exit(f"{o.bin} not found. Build it first:\n  cmake -S . -B build -G Ninja "
                 "-DCMAKE_BUILD_TYPE=Release && cmake --build build --target train_sasrec")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = o.work or os.path.join(ROOT, "cache", "compare_pytorch",
                                  f"{o.config}-{o.device}-{stamp}")
    os.makedirs(work, exist_ok=True)
    out_md = o.out or os.path.join(ROOT, "cache", f"compare_pytorch_{o.config}_{o.device}.md")

    common = (f"--data {data} {cfg['args']} --epochs {epochs} --seed {o.seed} --threads {threads} "
              "--eval-every 0").split() + o.override.split()

    rows = []  # one dict per implementation; "na" holds why a row has no figures
    floor = None

    if "seqrec" in only:
        mj = os.path.join(work, "seqrec.json")
        cmd = [o.bin, *common, "--no-progress", "--metrics-json", mj]
        if o.device != "cpu":
            cmd += ["--device", o.device]
        print(f"[1/3] seqrec: {' '.join(cmd)}", file=sys.stderr, flush=True)
        rc, rss, floor, wall = run_child(cmd, os.path.join(work, "seqrec.log"))
        if rc == 0 and os.path.exists(mj):
            with open(mj) as f:
                m = json.load(f)
            rows.append({"name": "seqrec (C++/Eigen)", "tps": m["train_tokens_per_second"],
                         "spe": m["train_seconds"] / max(1, m["epochs"]), "mem": rss,
                         "mem_note": "peak RSS", "valid": m.get("valid"), "test": m.get("test"),
                         "warm": None, "wall": wall})
        else:
            why = tail(os.path.join(work, "seqrec.log"), 1).strip()
            note = ("n/a (CUDA trainer not wired)" if o.device != "cpu" else f"failed (exit {rc})")
            print(f"  seqrec: {note}: {why}", file=sys.stderr)
            rows.append({"name": "seqrec (C++/Eigen)", "na": note})

    for k, mode in enumerate(("eager", "compile"), 2):
        if mode not in only:
            continue
        js = os.path.join(work, f"pytorch_{mode}.json")
        cmd = [o.python, os.path.join(HERE, "reference", "sasrec_torch.py"), *common,
               "--device", o.device, "--out", js] + (["--compile"] if mode == "compile" else [])
        print(f"[{k}/3] pytorch {mode}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        rc, rss, floor, wall = run_child(cmd, os.path.join(work, f"pytorch_{mode}.log"))
        name = f"PyTorch {'eager' if mode == 'eager' else 'torch.compile'}"
        if rc != 0 or not os.path.exists(js):
            print(f"  failed (exit {rc}):\n{tail(os.path.join(work, f'pytorch_{mode}.log'))}",
                  file=sys.stderr)
            rows.append({"name": name, "na": f"failed (exit {rc}, see {js[:-5]}.log)"})
            continue
        with open(js) as f:
            r = json.load(f)
        rows.append({"name": name, "tps": r["train_tokens_per_second"],
                     "spe": r["seconds_per_epoch"],
                     "mem": r["peak_memory_bytes"] if o.device == "cuda" else rss,
                     "device_name": r.get("device_name"),
                     "mem_note": "peak allocated" if o.device == "cuda" else "peak RSS",
                     "valid": r["valid"], "test": r["test"], "warm": r["warmup_seconds"],
                     "wall": wall, "torch": r["torch"], "rss0": r["rss_before_training_bytes"],
                     "graphs": r.get("compiled_graphs")})

    # FLOPs per scored token, from the split both sides build (sasrec_torch reproduces it exactly).
    # Imported only now, so that this process stays small while the runs go.
    import sasrec_torch as S  # noqa: E402 - needs numpy and torch: run this in the PyTorch venv
    a = S.parse_args(common)
    d = S.prepare(a)
    scored = int((d["train_targets"] >= S.NUM_SPECIAL).sum())
    positions = int(d["train_inputs"].size)
    fl = S.flops_per_token(a.dim, a.layers, a.ffn_dim or 4 * a.dim, a.max_len, d["items"],
                           positions, scored)

    gpu = next((r["device_name"] for r in rows if r.get("device_name") not in (None, "cpu")), None)
    split = "test" if any(r.get("test") for r in rows) else "valid"
    seq = next((r for r in rows if r["name"].startswith("seqrec") and "na" not in r), None)
    lines = [
        f"## seqrec vs PyTorch: `{o.config}` on {o.device} ({dt.date.today().isoformat()})",
        "",
        f"- data: `{cfg['data']}`, `{cfg['args']}{' ' + o.override if o.override else ''}`, "
        f"{epochs} epoch(s), seed {o.seed}, "
        f"{threads} CPU thread(s); {cpu_name()}" + (f" + {gpu}" if gpu else ""),
        f"- per epoch: {positions:,} computed positions, {scored:,} scored (non-padding) targets",
        f"- matmul FLOPs per scored training token (forward + backward = 3x forward): "
        f"**{fl['model'] / 1e6:.2f} MFLOP** model (6·P + 12·layers·L·D + 6·D·I), "
        f"{fl['executed'] / 1e6:.2f} MFLOP executed (padding positions included)",
        "",
        f"| implementation | train tokens/s | s/epoch | peak memory | MRR@10 ({split}) | "
        f"NDCG@10 ({split}) | HR@10 ({split}) | GFLOP/s | seqrec ÷ this, tokens/s | "
        f"seqrec ÷ this, memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "na" in r:
            lines.append(f"| {r['name']} | {r['na']} | | | | | | | | |")
            continue
        m = r.get(split) or {}
        ratio_t = ratio_m = "—"
        if seq is not None and r is not seq:
            ratio_t = f"{seq['tps'] / r['tps']:.2f}×" if r["tps"] else "n/a"
            ratio_m = (f"{seq['mem'] / r['mem']:.2f}×" if r["mem"] and o.device == "cpu"
                       else "n/a")
        lines.append(
            f"| {r['name']} | {r['tps']:,.0f} | {r['spe']:.1f} | {fmt_mib(r['mem'])} | "
            f"{m.get('mrr@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} | "
            f"{m.get('hr@10', float('nan')):.4f} | {fl['model'] * r['tps'] / 1e9:.1f} | "
            f"{ratio_t} | {ratio_m} |")
    notes = ["", "Notes:",
             "- train tokens/s and s/epoch count training steps only (batching, forward, backward, "
             "clipping, AdamW), not evaluation; PyTorch's figures exclude an untimed warm-up of "
             "forward/backward passes on the batch shapes training sees, which is where "
             "torch.compile compiles."]
    for r in rows:
        if r.get("warm") is not None:
            g = r.get("graphs") or {}
            extra = ""
            if "compile" in r["name"] and g:
                extra = (f", {g.get('after_warmup')} graph(s) compiled in warm-up, "
                         f"{g.get('at_end', 0) - g.get('after_warmup', 0)} more during training")
            notes.append(f"- {r['name']}: warm-up {r['warm']:.1f} s{extra}; torch {r['torch']}; "
                         f"RSS before training {fmt_mib(r['rss0'])}.")
    notes += [
        "- peak memory: " + ("seqrec's peak RSS; PyTorch's torch.cuda.max_memory_allocated during "
                             "training (device memory, not comparable with an RSS)."
                             if o.device == "cuda" else
                             "peak RSS of each process (wait4 through a small launcher whose own "
                             f"{fmt_mib(floor) if floor else 'few MiB'} are the floor), library "
                             "code and data included: importing torch alone takes several "
                             "hundred MiB (see RSS before training)."),
        "- GFLOP/s = model FLOPs per scored token × train tokens/s.",
        "- Both sides use the same initial parameters and batch order (sasrec_torch.py replays "
        "seqrec's random streams); dropout masks differ (PyTorch's generator), so metrics agree "
        "statistically, not exactly. With dropout 0 they agree to float rounding "
        "(bench/reference/check_reference.py).",
        f"- logs and JSON: `{os.path.relpath(work, ROOT)}`",
    ]
    text = "\n".join(lines + notes) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    tmp = out_md + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out_md)
    print(f"written to {os.path.relpath(out_md, ROOT)}", file=sys.stderr)
    return 0 if all("na" not in r or r["na"].startswith("n/a") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
