#!/usr/bin/env python3
"""What one bf16 training step of the CUDA model must cost, counted, not measured.

A model of the step as the code stands (include/seqrec/model/model_cuda.cuh, bf16 mode with its
defaults: bf16 activations, bf16 GEMM outputs and logits, the weights' bf16 mirror, lazy gradient
zeroing, one loss chunk; RoPE fused into attention, RMSNorm, SiLU MLP, dropout on): for each phase
of the profiler (gpu_train_bench --profile), the GEMMs' FLOPs and the bytes the other kernels of
that phase must move through DRAM at least (each tensor they read or write, once; the GEMMs' own
operand traffic is left inside the GEMM rate). From a GEMM rate and a DRAM bandwidth it gives the
fastest step this design allows and the MFU of that step (gpu_train_bench's convention: model
FLOPs of the scored tokens against the dense bf16 peak).

It answers one question before a GPU measures anything: how fast must the GEMMs and the other
kernels be for the step to reach a given MFU (the issue asks 40%)? Set the GEMM rate from the
profile's "GEMMS |" line and the bandwidth from gpu_bench's elementwise rows; then each phase's
measured ms against its floor here says which kernels are far from their bound.

    python3 bench/step_traffic.py [--gemm-tflops 560] [--bandwidth 3.0] [--rows 9188] [--target 40]
    python3 bench/step_traffic.py --profile LOG [--bandwidth 3.0]

With --profile, LOG is the output of `gpu_train_bench --bf16 --profile N` (its "PROFILE SHAPE" and
"PHASE" lines): the step is counted at the profile's mean scored rows, and each phase's measured
time is split into its GEMMs (timed alone by the profiler) and the rest, which is read against the
bytes counted here: the rest's effective bandwidth and its excess over the floor, phases with the
largest excess first. That table says where a measured step loses its time.

Defaults: the study's shape (d 1024, 5 layers, 8 heads, FFN 4096, L 20, batch 1024, 16859 items,
9188 scored rows: the synthetic batches of gpu_train_bench); 560 TFLOP/s (the FFN up-projection
GEMM on the H100 in the seventh session's fourth run, 57% of peak); 3.0 TB/s (90% of the H100
SXM's 3.35).
"""

import argparse
import sys

PEAK_BF16 = 989e12  # H100 SXM dense bf16, FLOP/s


def step_model(a):
    M, D, F, H, L, B, I, layers = a.rows, a.dim, a.ffn, a.heads, a.length, a.batch, a.items, a.layers
    Ig = (I + 7) // 8 * 8  # the loss's padded item count
    md4, md2, mf2 = 4 * M * D, 2 * M * D, 2 * M * F
    probs = 4 * H * M * L  # the rows of P a packed step writes (each sequence's n rows of L)
    phases = {}  # name -> [gemm model flops, gemm executed flops, non-GEMM bytes]

    def add(name, flops=0.0, executed=None, bytes_=0.0):
        p = phases.setdefault(name, [0.0, 0.0, 0.0])
        p[0] += flops
        p[1] += flops if executed is None else executed
        p[2] += bytes_

    # Forward. Embeddings on the packed rows (gather, then dropout in place); block 0's norm1.
    add("embedding + dropout (fwd)", bytes_=md4 + md4 + 2 * md4)
    add("norms (fwd)", bytes_=md4 + md2)
    for layer in range(layers):
        add("qkv linear (fwd)", 2 * M * 3 * D * D)  # bf16 qkv out of the epilogue
        add("attention (fwd)", bytes_=3 * md2 + md2 + probs)  # qkv in; ctx and P out
        add("out linear (fwd)", 2 * M * D * D)  # bf16 branch out of the epilogue
        # x_mid = x_in + drop(branch) and norm2: x_in, branch in; x_mid, a2 out.
        add("residual + norm (fwd)", bytes_=md4 + md2 + md4 + md2)
        add("ffn (fwd)", 2 * 2 * M * F * D, bytes_=mf2 + mf2)  # activation: pre in, act out
        # x_out and the next norm1 (or the final norm, fp32 h out).
        last = layer == layers - 1
        add("residual + norm (fwd)", bytes_=md4 + md2 + md4 + (md4 if last else md2))
    # The loss, one chunk, every row scored: rows gathered to bf16; logits GEMM (bf16 Z); softmax
    # reads Z and writes G over it; dH GEMM straight into dh (fp32); dW GEMM (fp32, beta 0: the
    # table's item rows are zeroed lazily).
    ce = 3 * 2 * M * I * D
    add("cross-entropy (fwd + bwd)", ce, 3 * 2 * M * Ig * D, (md4 + md2) + 2 * 2 * M * Ig)
    # Backward.
    add("norms (bwd)", bytes_=md4 + md4 + md4)  # the final norm: x, dh in; dx out
    for _ in range(layers):
        # fc2: the branch's dropout backward into its bias sum and bf16 operand (dx in, g out);
        # d(act) GEMM (bf16 out); the activation's backward into fc1's bias sum and operand
        # (pre, d(act) in, g out); fc1's input-gradient GEMM (bf16 out).
        add("ffn (bwd)", 2 * 2 * 2 * M * F * D, bytes_=(md4 + md2) + 3 * mf2)
        # norm2's backward: x_mid and the bf16 dy in, dx added to (read and written).
        add("norms (bwd)", bytes_=md4 + md2 + 2 * md4)
        add("out linear (bwd)", 2 * 2 * M * D * D, bytes_=md4 + md2)  # as fc2's branch
        add("attention (bwd)", bytes_=3 * md2 + md2 + probs + 3 * md2)  # qkv, d(ctx), P; d(qkv)
        add("qkv linear (bwd)", 2 * 2 * M * 3 * D * D, bytes_=3 * md2)  # bias: d(qkv)'s sums
        add("norms (bwd)", bytes_=md4 + md2 + 2 * md4)  # norm1, as norm2
    # The embeddings' dropout backward in place, then the table's gradient: the packed rows'
    # gradients in, the touched table rows read and written (at most M of them).
    add("embedding + dropout (bwd)", bytes_=2 * md4 + md4 + 2 * md4)
    # Parameters: per block qkv, out, fc1, fc2 weights and biases and two RMSNorm gains; the final
    # gain; the item table (4 special rows + I).
    per_layer = 3 * D * D + 3 * D + D * D + D + F * D + F + D * F + D + 2 * D
    p_blocks = layers * per_layer + D
    p_table = (4 + I) * D
    p_all = p_blocks + p_table
    mirrored = layers * (4 * D * D + 2 * F * D) + (4 + Ig) * D  # the bf16 mirror's elements
    # Optimiser: the norm reads every gradient; AdamW reads g, m, v, p and writes m, v, p (fp32)
    # and the mirror (bf16).
    add("optimizer (clip + AdamW)", bytes_=4 * p_all + 28 * p_all + 2 * mirrored)
    # zero_grads() (outside every phase): the tensors that are not a linear weight or the table's
    # item rows, in fp32.
    lazy = layers * (4 * D * D + 2 * F * D) + I * D
    add("zero_grads (outside the profile)", bytes_=4 * (p_all - lazy))
    model_flops = M * (6 * p_blocks + 12 * layers * L * D + 6 * D * I)
    return phases, model_flops, p_all


def read_profile(path):
    """The PROFILE SHAPE and PHASE lines of a gpu_train_bench --profile log: ({field: value} of
    the shape, mean scored rows included; {phase: (ms, GEMM ms, GEMM GFLOP)}), per step."""
    shape, phases = None, {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            where = f"step_traffic.py: {path}:{n}"
            if line.startswith("PROFILE SHAPE |"):
                try:
                    shape = {k: float(v) for k, v in
                             (x.split() for x in line.split("|")[1:])}
                except ValueError:
                    sys.exit(f"{where}: expected 'name value' fields in {line!r}")
            elif line.startswith("PHASE |"):
                parts = [x.strip() for x in line.split("|")]
                if len(parts) != 5:
                    sys.exit(f"{where}: a PHASE line has 5 fields, got {len(parts)}: {line!r}")
                try:
                    phases[parts[1]] = tuple(float(x) for x in parts[2:])
                except ValueError:
                    sys.exit(f"{where}: not a number in {line!r}")
    if shape is None or not phases:
        sys.exit(f"step_traffic.py: {path}: no PROFILE SHAPE and PHASE lines (a log of "
                 f"gpu_train_bench --profile N, N > 0, is needed)")
    missing = {"rows", "dim", "ffn", "heads", "layers", "length", "batch", "items"} - set(shape)
    if missing:
        sys.exit(f"step_traffic.py: {path}: the PROFILE SHAPE line lacks {sorted(missing)}")
    return shape, phases


def compare(phases, measured, bw):
    """Prints each measured phase against its counted floor, the largest excess first. Returns
    the phases whose measured GEMM GFLOP differ from the counted ones by more than 1%."""
    rows = []
    for name, (ms, g_ms, g_gflop) in measured.items():
        counted = phases.get(name)
        rows.append((name, ms, g_ms, g_gflop, counted))

    def excess(r):
        _, ms, g_ms, _, counted = r
        return (ms - g_ms) - (counted[2] / bw * 1e3 if counted is not None else 0.0)

    rows.sort(key=excess, reverse=True)
    print("| phase | ms | GEMM ms | GEMM GFLOP (counted) | GEMM TFLOP/s | rest ms | rest floor ms "
          "| rest GB/s | rest excess ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = [0.0] * 4
    mismatched = []
    for name, ms, g_ms, g_gflop, counted in rows:
        rest = ms - g_ms
        rate = f"{g_gflop / g_ms:.0f}" if g_ms > 0 else "–"
        if counted is None:
            print(f"| {name} (not counted) | {ms:.3f} | {g_ms:.3f} | {g_gflop:.4g} (–) | {rate} | "
                  f"{rest:.3f} | – | – | – |")
            if g_gflop > 0:
                mismatched.append(name)
            continue
        c_gflop, bytes_ = counted[1] / 1e9, counted[2]
        if abs(g_gflop - c_gflop) > 0.01 * max(c_gflop, 1e-9) and abs(g_gflop - c_gflop) > 1e-6:
            mismatched.append(name)
        floor = bytes_ / bw * 1e3
        gbs = f"{bytes_ / (rest / 1e3) / 1e9:.0f}" if rest > 0 and bytes_ > 0 else "–"
        print(f"| {name} | {ms:.3f} | {g_ms:.3f} | {g_gflop:.4g} ({c_gflop:.4g}) | {rate} | "
              f"{rest:.3f} | {floor:.3f} | {gbs} | {rest - floor:+.3f} |")
        tot = [tot[0] + ms, tot[1] + g_ms, tot[2] + rest, tot[3] + floor]
    print(f"| **counted phases** | {tot[0]:.3f} | {tot[1]:.3f} | – | – | {tot[2]:.3f} | "
          f"{tot[3]:.3f} | – | {tot[2] - tot[3]:+.3f} |")
    return mismatched


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gemm-tflops", type=float, default=560.0,
                    help="rate of every GEMM, TFLOP/s (default 560)")
    ap.add_argument("--bandwidth", type=float, default=3.0,
                    help="DRAM bandwidth the other kernels reach, TB/s (default 3.0)")
    ap.add_argument("--rows", type=int, default=9188, help="scored (packed) rows per step")
    ap.add_argument("--target", type=float, default=40.0, help="MFU to solve for, percent")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--items", type=int, default=16859)
    ap.add_argument("--profile", metavar="LOG",
                    help="a gpu_train_bench --profile log to read against the floor (its shape "
                         "and mean scored rows replace the shape options)")
    ap.add_argument("--check-gemm-flops", action="store_true",
                    help="with --profile: exit 1 if a phase's measured GEMM GFLOP differ from "
                         "the counted ones by more than 1%% (checks this model against the GEMMs "
                         "the code issues)")
    a = ap.parse_args()
    measured = None
    if a.profile:
        shape, measured = read_profile(a.profile)
        for k, v in shape.items():  # the mean scored rows stay fractional
            setattr(a, k, v if k == "rows" else max(1, round(v)))
    if min(a.gemm_tflops, a.bandwidth, a.rows, a.target) <= 0:
        sys.exit("step_traffic.py: rates, rows and the target must be positive")
    phases, model_flops, p_all = step_model(a)
    rate, bw = a.gemm_tflops * 1e12, a.bandwidth * 1e12
    print(f"bf16 step at d {a.dim}, {a.layers} layers, FFN {a.ffn}, {a.rows:g} scored rows, "
          f"{a.items} items ({p_all / 1e6:.1f} M parameters); GEMMs at {a.gemm_tflops:.0f} "
          f"TFLOP/s, other kernels at {a.bandwidth:.2f} TB/s")
    print(f"| phase | GEMM GFLOP | GEMM ms | other GB | other ms | floor ms |")
    print("|---|---|---|---|---|---|")
    tg = tb = 0.0
    for name, (flops, executed, bytes_) in phases.items():
        g_ms, b_ms = executed / rate * 1e3, bytes_ / bw * 1e3
        tg, tb = tg + executed, tb + bytes_
        print(f"| {name} | {executed / 1e9:.0f} | {g_ms:.2f} | {bytes_ / 1e9:.2f} | {b_ms:.2f} | "
              f"{g_ms + b_ms:.2f} |")
    g_ms, b_ms = tg / rate * 1e3, tb / bw * 1e3
    step = g_ms + b_ms
    print(f"| **step** | {tg / 1e9:.0f} | {g_ms:.2f} | {tb / 1e9:.2f} | {b_ms:.2f} | "
          f"**{step:.2f}** |")
    mfu = model_flops / (step / 1e3) / PEAK_BF16 * 100
    print(f"\nmodel FLOPs {model_flops / 1e12:.3f} TFLOP per step; at the floor: {step:.2f} ms, "
          f"MFU {mfu:.1f}% (the GEMMs alone: {model_flops / (g_ms / 1e3) / PEAK_BF16 * 100:.1f}%)")
    budget = model_flops / (a.target / 100 * PEAK_BF16) * 1e3
    print(f"MFU {a.target:.0f}% needs a step of {budget:.2f} ms: ", end="")
    if budget <= g_ms:
        print(f"not even the GEMMs fit (they take {g_ms:.2f} ms at this rate)")
    else:
        need = tb / ((budget - g_ms) / 1e3) / 1e12
        print(f"{budget - g_ms:.2f} ms left beside the GEMMs for {tb / 1e9:.2f} GB, i.e. "
              f"{need:.2f} TB/s sustained by every other kernel")
    if measured is not None:
        print(f"\n{a.profile}, per phase (GEMMs timed alone; the rest against the bytes counted "
              f"above at {a.bandwidth:.2f} TB/s; zero_grads is outside every phase):")
        mismatched = compare(phases, measured, bw)
        if mismatched:
            print(f"GEMM GFLOP differ from the count in: {', '.join(mismatched)}")
            if a.check_gemm_flops:
                sys.exit(1)
        else:
            print("every phase's GEMM GFLOP match the count (within 1%)")


if __name__ == "__main__":
    main()
