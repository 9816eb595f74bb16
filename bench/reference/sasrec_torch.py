#!/usr/bin/env python3
"""PyTorch reference of seqrec's SASRec baseline (train_sasrec: learned positions, RMSNorm,
ReLU MLP, random init), for accuracy and speed comparisons against the C++ trainer.

The maths follows the C++ sources line by line (include/seqrec/model/model.hpp and the policies and
ops it uses, train/{trainer,adamw,schedule}.hpp, data/*.hpp, eval/*.hpp):

  x0 = E[tokens] * sqrt(D) + P[slot]              dropout
  per block:  x += dropout(Wo · attn(rmsnorm1(x)) + bo)     causal; keys that are padding masked;
                                                             a padding query attends to itself
              x += dropout(W2 · relu(W1 · rmsnorm2(x) + b1) + b2)
  h = rmsnorm_f(x);  logits = h · E[items]ᵀ (tied, items only, never the 4 special tokens)
  loss = mean over non-padding targets of the full-softmax cross-entropy

Initialisation, the data split and the batch order reproduce the C++ random streams exactly
(SplitMix64, Box-Muller, Fisher-Yates with Lemire's multiply-shift), so with dropout 0 a run here
retraces a train_sasrec run up to float rounding. Dropout masks come from PyTorch's generator (the
C++ uses a counter hash): same distribution, different draws.

AdamW (betas 0.9/0.98, eps 1e-8, decoupled decay on matrices and embeddings only), gradient
clipping at --clip over all parameters, linear warmup (5% of the steps unless --warmup) then
cosine to 0, per step. Evaluation: full catalogue, pessimistic ties, MRR/NDCG/HR@10.

Output: one JSON object (--out), written to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, BOS, NUM_SPECIAL = 0, 1, 4
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


# ---- seqrec's random numbers (include/seqrec/core/random.hpp) -----------------------------------

def mix64(x: int) -> int:
    """SplitMix64 finaliser with the increment, as seqrec::mix64."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _finalise(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Rng:
    """seqrec::Rng: the k-th output of a stream seeded with s is finalise(s + k·golden)."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_block(self, n: int) -> np.ndarray:
        k = np.arange(1, n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            out = _finalise(np.uint64(self.state) + k * np.uint64(GOLDEN))
        self.state = (self.state + n * GOLDEN) & MASK64
        return out

    def uniform_block(self, n: int) -> np.ndarray:
        return (self.next_block(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normal_block(self, n: int) -> np.ndarray:
        """n draws of Rng::normal (Box-Muller, two uniforms per value, u1 then u2)."""
        u = self.uniform_block(2 * n)
        u1 = np.maximum(u[0::2], 1e-300)
        u2 = u[1::2]
        return np.sqrt(-2.0 * np.log(u1)) * np.cos((2.0 * math.pi) * u2)

    def shuffle(self, items: list) -> None:
        """Rng::shuffle: for i = n … 2, swap(r[i-1], r[below(i)]), below(i) = (u64 · i) >> 64."""
        n = len(items)
        if n < 2:
            return
        if n >= 1 << 32:
            raise ValueError("shuffle of more than 2^32 elements is not supported here")
        out = self.next_block(n - 1)
        mult = np.arange(n, 1, -1, dtype=np.uint64)
        with np.errstate(over="ignore"):  # high 64 bits of a 64x32-bit product, exactly
            lo = (out & np.uint64(0xFFFFFFFF)) * mult
            hi = (out >> np.uint64(32)) * mult
            js = ((hi + (lo >> np.uint64(32))) >> np.uint64(32)).tolist()
        for step, j in enumerate(js):
            i = n - step
            items[i - 1], items[j] = items[j], items[i - 1]


# ---- data (include/seqrec/data/{interactions,dataset,vocabulary,batcher}.hpp) --------------------

def _read_rows(path: str):
    """(user, item, order or None) arrays of a log file, by extension as seqrec's Format::Auto."""
    ext = os.path.splitext(path)[1].lower()
    if ext in ("", ".tsv") or ext not in (".csv", ".txt", ".dat"):
        try:
            arr = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)
        except ValueError:
            arr = None  # e.g. a float order column: parsed line by line below
        if arr is not None:
            if arr.shape[1] not in (2, 3):
                raise ValueError(f"{path}: expected 2 or 3 tab-separated columns")
            return arr[:, 0], arr[:, 1], (arr[:, 2] if arr.shape[1] == 3 else None)
    users, items, order = [], [], []
    with open(path, encoding="utf-8-sig") as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if ext == ".csv":
                fs = [x.strip() for x in line.split(",")]
                if no == 1:
                    try:
                        float(fs[0])
                    except ValueError:
                        continue  # header
            elif ext == ".txt":
                fs = line.split()
            elif ext == ".dat":
                fs = [x.strip() for x in line.split("::")]
                fs = [fs[0], fs[1], fs[3]]
            else:
                fs = [x.strip() for x in line.split("\t")]
            users.append(int(fs[0]))
            items.append(int(fs[1]))
            if len(fs) >= 3:
                order.append(float(fs[2]))
    o = np.asarray(order, dtype=np.float64) if order else None
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), o


def load_log(path: str):
    """Users grouped in order of first appearance, each user's rows stably sorted by the order
    column (group_and_sort). Returns (user, item) arrays."""
    if os.path.isdir(path):
        path = os.path.join(path, "interactions.tsv")
    user, item, order = _read_rows(path)
    n = len(user)
    if n == 0:
        raise ValueError(f"{path}: no interactions")
    _, first, inv = np.unique(user, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    ukey = rank[inv.reshape(-1)]
    keys = (np.arange(n),) + ((order,) if order is not None else ()) + (ukey,)
    perm = np.lexsort(keys)  # last key primary; the row index keeps it stable
    return user[perm], item[perm], path


def build_dataset(user: np.ndarray, item: np.ndarray, max_items: int, truncation: str):
    """Tokens by first appearance of the item in the grouped log (4 + rank); sequences per user in
    first-appearance order; optionally truncated (recent keeps the last, earliest the first)."""
    _, first, inv = np.unique(item, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    tokens = (NUM_SPECIAL + rank[inv.reshape(-1)]).astype(np.int64)
    bounds = np.flatnonzero(np.diff(user)) + 1
    seqs = np.split(tokens, bounds)
    if max_items > 0:
        seqs = [s[-max_items:] if truncation == "recent" else s[:max_items] for s in seqs]
    return seqs, NUM_SPECIAL + len(first)


def _share_count(share: float, n: int) -> int:
    return min(int(share * n + 0.5), n)


def split_loo(seqs):
    train, valid, test, dropped = [], [], [], 0
    for u, s in enumerate(seqs):
        if len(s) < 3:
            dropped += 1
            continue
        train.append(s[:-2])
        valid.append((u, s[:-2], int(s[-2])))
        test.append((u, s[:-1], int(s[-1])))
    return train, valid, test, dropped


def split_holdout(seqs, holdout_share: float, seed: int, test_share: float):
    n = len(seqs)
    order = list(range(n))
    Rng(mix64(seed) ^ 0x686F6C646F7574).shuffle(order)  # "holdout"
    held = np.zeros(n, dtype=bool)
    held[order[: _share_count(holdout_share, n)]] = True
    train, cases, dropped = [], [], 0
    for u, s in enumerate(seqs):
        if not held[u]:
            if len(s):
                train.append(s)
            continue
        if len(s) < 2:
            dropped += 1
            continue
        train.append(s[:-1])
        cases.append((u, s[:-1], int(s[-1])))
    valid, test = cases, []
    if test_share > 0:
        pick = list(range(len(cases)))
        Rng(mix64(seed) ^ 0x746573745F73706C).shuffle(pick)  # "test_spl"
        to_test = np.zeros(len(cases), dtype=bool)
        to_test[pick[: _share_count(test_share, len(cases))]] = True
        valid = [c for k, c in enumerate(cases) if not to_test[k]]
        test = [c for k, c in enumerate(cases) if to_test[k]]
    return train, valid, test, dropped


def train_rows(seqs, L: int):
    """make_train_row for every non-empty sequence: inputs [BOS, x1..x_{n-1}], targets [x1..xn],
    the last L positions, left-padded. Returns (inputs, targets) int64 (S, L)."""
    seqs = [s for s in seqs if len(s)]
    inp = np.zeros((len(seqs), L), dtype=np.int64)
    tgt = np.zeros((len(seqs), L), dtype=np.int64)
    for r, s in enumerate(seqs):
        keep = min(len(s), L)
        tgt[r, L - keep:] = s[len(s) - keep:]
        shifted = np.concatenate(([BOS], s[:-1]))
        inp[r, L - keep:] = shifted[len(s) - keep:]
    return inp, tgt


def eval_rows(histories, L: int) -> np.ndarray:
    """make_eval_row: [BOS, h1..hm], the last L tokens, left-padded."""
    out = np.zeros((len(histories), L), dtype=np.int64)
    for r, h in enumerate(histories):
        row = np.concatenate(([BOS], h))[-L:]
        out[r, L - len(row):] = row
    return out


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """TrainBatcher::start_epoch: the rows shuffled by Rng(mix64(seed) ^ mix64(epoch ^ "epoch"))."""
    order = list(range(num_rows))
    Rng(mix64(seed) ^ mix64(epoch ^ 0x65706F6368)).shuffle(order)
    return np.asarray(order, dtype=np.int64)


# ---- model (include/seqrec/model/model.hpp, policy/*.hpp, ops/*) ---------------------------------

def param_specs(vocab: int, L: int, D: int, layers: int, ffn: int, init_std: float = 0.02):
    """Every tensor in seqrec's registration order: (name, shape, decay, init, std)."""
    out_std = init_std / math.sqrt(2.0 * max(1, layers))
    specs = [("item_emb.weight", (vocab, D), True, "normal", init_std),
             ("pos_emb.weight", (L, D), True, "normal", init_std)]
    for layer in range(layers):
        p = f"blocks.{layer}."
        specs += [(p + "norm1.weight", (D,), False, "ones", 0.0),
                  (p + "attn.qkv.weight", (3 * D, D), True, "normal", init_std),
                  (p + "attn.qkv.bias", (3 * D,), False, "zeros", 0.0),
                  (p + "attn.out.weight", (D, D), True, "normal", out_std),
                  (p + "attn.out.bias", (D,), False, "zeros", 0.0),
                  (p + "norm2.weight", (D,), False, "ones", 0.0),
                  (p + "ffn.fc1.weight", (ffn, D), True, "normal", init_std),
                  (p + "ffn.fc1.bias", (ffn,), False, "zeros", 0.0),
                  (p + "ffn.fc2.weight", (D, ffn), True, "normal", out_std),
                  (p + "ffn.fc2.bias", (D,), False, "zeros", 0.0)]
    specs.append(("norm_f.weight", (D,), False, "ones", 0.0))
    return specs


def seqrec_init(specs, seed: int):
    """ParameterStore::initialise: one Rng(seed) stream over the normal tensors, in order."""
    rng = Rng(seed)
    values = {}
    for name, shape, _, init, std in specs:
        n = int(np.prod(shape))
        if init == "normal":
            v = np.empty(n, dtype=np.float32)
            for c0 in range(0, n, 1 << 20):  # chunks bound the temporary uint64 arrays
                c = min(1 << 20, n - c0)
                v[c0:c0 + c] = (rng.normal_block(c) * std).astype(np.float32)
        else:
            v = np.full(n, 1.0 if init == "ones" else 0.0, dtype=np.float32)
        values[name] = v.reshape(shape)
    return values


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # x / sqrt(mean(x²) + eps) · g
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows [Q | K | V], head h owns h·dh … h·dh+dh−1
        self.out = nn.Linear(dim, dim)

    def forward(self, x, mask):
        B, L, D = x.shape
        H = self.heads
        q, k, v = self.qkv(x).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class ReluMlp(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, ffn, eps, dropout):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads)
        self.norm2 = RMSNorm(dim, eps)
        self.ffn = ReluMlp(dim, ffn)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    """Parameter names equal seqrec's, so a checkpoint's param/<name> tensors load directly."""

    def __init__(self, vocab, max_len, dim, layers, heads, ffn, dropout, norm_eps=1e-6):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.item_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn, norm_eps, dropout)
                                    for _ in range(layers))
        self.norm_f = RMSNorm(dim, norm_eps)
        self.scale = math.sqrt(dim)

    def hidden(self, tokens):
        """tokens (B, L), left-padded → h (B, L, D)."""
        B, L = tokens.shape
        valid = tokens != PAD
        ar = torch.arange(L, device=tokens.device)
        causal = ar[None, :] <= ar[:, None]  # key j ≤ query i
        allowed = causal[None] & valid[:, None, :]
        allowed = torch.where(valid[:, :, None], allowed, ar[None, :] == ar[:, None])
        mask = allowed[:, None]  # (B, 1, L, L), broadcast over heads
        x = self.item_emb(tokens) * self.scale + self.pos_emb.weight[:L]
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm_f(x)

    def forward(self, tokens, rows, targets):
        """Mean cross-entropy over the scored positions rows (flat indices into B·L) whose item
        indices (token − 4) are targets."""
        h = self.hidden(tokens).reshape(-1, self.dim).index_select(0, rows)
        logits = h @ self.item_emb.weight[NUM_SPECIAL:].t()
        return F.cross_entropy(logits, targets)

    def score_last(self, tokens):
        """(B, I) scores of every item after the last position of each row."""
        h = self.hidden(tokens)[:, -1]
        return h @ self.item_emb.weight[NUM_SPECIAL:].t()


def read_safetensors(path: str) -> dict:
    """{name: np.ndarray} of a safetensors file (F32/F64/I64/I32 tensors)."""
    dt = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        buf = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(buf[b:e], dtype=dt[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def load_params(model: nn.Module, values: dict, prefix: str = "") -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = values[prefix + name]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{prefix + name}: shape {v.shape}, model wants {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))


# ---- training ------------------------------------------------------------------------------------

def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """WarmupCosine for the 1-based optimiser step."""
    if warmup > 0 and step <= warmup:
        return peak * step / warmup
    span = max(1, total - warmup)
    t = min(max((step - warmup) / span, 0.0), 1.0)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def make_optimizer(model: SASRec, specs, lr, weight_decay, device):
    decay = {name for name, _, d, _, _ in specs if d}
    named = dict(model.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]
    kw = dict(lr=lr, betas=(0.9, 0.98), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kw), "foreach"


def clip_grad_norm(params, max_norm: float):
    """seqrec's clip: if ‖g‖ > max_norm, g *= max_norm / (‖g‖ + 1e-12). No host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-12), max=1.0))
    return total


class Batches:
    """The training rows of one epoch in seqrec's order, as device tensors per batch."""

    def __init__(self, inputs, targets, batch, device):
        self.inputs, self.targets, self.batch, self.device = inputs, targets, batch, device
        self.order = np.arange(len(inputs))

    def __len__(self):
        return (len(self.inputs) + self.batch - 1) // self.batch

    def get(self, i):
        idx = self.order[i * self.batch:(i + 1) * self.batch]
        inp = self.inputs[idx]
        flat = self.targets[idx].reshape(-1)
        rows = np.flatnonzero(flat >= NUM_SPECIAL)
        tgt = flat[rows] - NUM_SPECIAL
        return self._to(inp), self._to(rows), self._to(tgt), len(rows)

    def _to(self, a):
        return torch.from_numpy(a).to(self.device, non_blocking=True)


@torch.no_grad()
def evaluate(model: SASRec, cases, L: int, device, k: int = 10, batch: int = 256,
             exclude_history: bool = False):
    """Full-catalogue ranks with pessimistic ties (rank = 1 + #{j ≠ t : !(s_j < s_t)})."""
    if not cases:
        return None
    was_training = model.training
    model.eval()
    mrr = hr = ndcg = 0.0
    for c0 in range(0, len(cases), batch):
        chunk = cases[c0:c0 + batch]
        inp = torch.from_numpy(eval_rows([h for _, h, _ in chunk], L)).to(device)
        scores = model.score_last(inp)
        tgt = torch.tensor([t - NUM_SPECIAL for _, _, t in chunk], device=device)
        st = scores.gather(1, tgt[:, None])
        if exclude_history:
            for r, (_, h, t) in enumerate(chunk):
                ex = torch.as_tensor(np.setdiff1d(h, [t]) - NUM_SPECIAL, device=device)
                scores[r, ex] = -math.inf
        ranks = (~(scores < st)).sum(1).cpu().numpy()  # the target itself counts once: the +1
        for rank in ranks.tolist():
            if rank <= k:
                mrr += 1.0 / rank
                hr += 1.0
                ndcg += 1.0 / math.log2(rank + 1.0)
    n = len(cases)
    model.train(was_training)
    return {"mrr@10": mrr / n, "hr@10": hr / n, "ndcg@10": ndcg / n, "users": n}


def flops_per_token(D, layers, ffn, L, items, positions, scored):
    """Matmul FLOPs (forward + backward = 3x forward). "model": 6·P + 12·layers·L·D + 6·D·I per
    scored token (P = block matmul weights), as docs/performance.md; "executed": the block work
    of every computed position (padding included) spread over the scored tokens."""
    P = layers * (4 * D * D + 2 * D * ffn)
    trunk = 6 * P + 12 * layers * L * D
    out = 6 * D * items
    return {"model": trunk + out,
            "executed": trunk * positions / max(1, scored) + out,
            "trunk_per_position": trunk, "output_per_scored": out}


def compiled_graphs() -> int:
    """Graphs torch.compile has produced so far in this process (0 when unavailable)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a diagnostic only
        return 0


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def write_json_atomic(path: str, obj) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data", required=True, help="dataset folder (interactions.tsv) or an interactions file")
    a("--protocol", default="loo", choices=["loo", "holdout"])
    a("--holdout-share", type=float, default=0.2)
    a("--test-share", type=float, default=0.0)
    a("--split-seed", type=int, default=42)
    a("--truncate", default="recent", choices=["recent", "earliest"])
    a("--max-len", type=int, default=50)
    a("--dim", type=int, default=64)
    a("--layers", type=int, default=2)
    a("--heads", type=int, default=2)
    a("--ffn-dim", type=int, default=0, help="0: 4 x dim")
    a("--dropout", type=float, default=0.2)
    a("--epochs", type=int, default=30)
    a("--batch", type=int, default=128)
    a("--lr", type=float, default=1e-3)
    a("--weight-decay", type=float, default=0.0)
    a("--warmup", type=int, default=-1, help="-1: 5%% of all steps")
    a("--clip", type=float, default=1.0)
    a("--seed", type=int, default=42)
    a("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    a("--device", default="cpu", choices=["cpu", "cuda"])
    a("--compile", action="store_true", help="train through torch.compile(model)")
    a("--bf16", action="store_true",
      help="mixed precision as seqrec's --bf16 compares against: the forward (and the loss) under "
           "torch.autocast(bfloat16), fp32 master weights and AdamW state; evaluation stays fp32")
    a("--eval-every", type=int, default=1, help="validate every N epochs (0: at the end only)")
    a("--exclude-history", action="store_true")
    a("--init-from", default="", help="start from the param/ tensors of a seqrec checkpoint")
    a("--no-warmup-steps", action="store_true",
      help="do not run the untimed forward/backward warm-up (compilation) before training")
    a("--out", default="", help="write the result JSON here")
    a("--quiet", action="store_true")
    return p.parse_args(argv)


def prepare(args):
    """Data, split and training rows exactly as train_sasrec builds them."""
    user, item, src = load_log(args.data)
    max_items = args.max_len if args.truncate == "earliest" else 0
    seqs, vocab = build_dataset(user, item, max_items, args.truncate)
    if args.protocol == "loo":
        train, valid, test, dropped = split_loo(seqs)
    else:
        train, valid, test, dropped = split_holdout(seqs, args.holdout_share, args.split_seed,
                                                    args.test_share)
    inp, tgt = train_rows(train, args.max_len)
    return dict(source=src, users=len(seqs), items=vocab - NUM_SPECIAL, vocab=vocab,
                interactions=int(len(user)), train=train, valid=valid, test=test, dropped=dropped,
                train_inputs=inp, train_targets=tgt)


def run(args, return_model: bool = False):
    """Trains and evaluates; returns the result dict (and the trained model if asked)."""
    t_start = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to PyTorch")
        torch.cuda.reset_peak_memory_stats()
    log = (lambda *m: None) if args.quiet else (lambda *m: print(*m, file=sys.stderr, flush=True))
    torch.manual_seed(args.seed)
    ffn = args.ffn_dim if args.ffn_dim > 0 else 4 * args.dim
    if args.dim % args.heads:
        raise SystemExit("--heads must divide --dim")

    d = prepare(args)
    L = args.max_len
    log(f"data: {d['source']} — {d['users']} users, {d['items']} items, {d['interactions']} "
        f"interactions; {len(d['train_inputs'])} train sequences, {len(d['valid'])} valid, "
        f"{len(d['test'])} test")

    specs = param_specs(d["vocab"], L, args.dim, args.layers, ffn)
    model = SASRec(d["vocab"], L, args.dim, args.layers, args.heads, ffn, args.dropout)
    if args.init_from:
        load_params(model, read_safetensors(args.init_from), prefix="param/")
    else:
        load_params(model, seqrec_init(specs, args.seed))
    model.to(device)
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    opt, opt_kind = make_optimizer(model, specs, args.lr, args.weight_decay, device)
    fwd = torch.compile(model) if args.compile else model
    if args.bf16:
        def step_fn(inp, rows, tgt):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                return fwd(inp, rows, tgt)
    else:
        step_fn = fwd
    log(f"model: pytorch {'compile' if args.compile else 'eager'}{' bf16 autocast' if args.bf16 else ''}"
        f" on {device}, {n_params} "
        f"parameters, {torch.get_num_threads()} threads, AdamW {opt_kind}")

    batches = Batches(d["train_inputs"], d["train_targets"], args.batch, device)
    per_epoch = len(batches)
    total = per_epoch * args.epochs
    warmup = args.warmup if args.warmup >= 0 else total // 20
    scored_per_epoch = int((d["train_targets"] >= NUM_SPECIAL).sum())
    fl = flops_per_token(args.dim, args.layers, ffn, L, d["items"], d["train_inputs"].size,
                         scored_per_epoch)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    baseline_rss = current_rss_bytes()

    # Untimed warm-up: forward + backward on the shapes training will see (first batches and the
    # smaller last batch), gradients discarded, parameters untouched. Under torch.compile this is
    # where compilation (and the recompilation for dynamic shapes) happens.
    warm_seconds = 0.0
    if not args.no_warmup_steps and total > 0:
        t0 = time.perf_counter()
        model.train()
        for i in sorted({0, min(1, per_epoch - 1), per_epoch - 1}):
            inp, rows, tgt, n = batches.get(i)
            if n:
                step_fn(inp, rows, tgt).backward()
        opt.zero_grad(set_to_none=True)
        sync()
        warm_seconds = time.perf_counter() - t0
        log(f"warm-up ({'compile' if args.compile else 'eager'}): {warm_seconds:.1f} s")
    graphs_after_warmup = compiled_graphs()

    history, step = [], 0
    train_seconds, train_tokens = 0.0, 0
    for epoch in range(args.epochs):
        batches.order = epoch_order(len(d["train_inputs"]), args.seed, epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        sync()
        t0 = time.perf_counter()
        for i in range(per_epoch):
            inp, rows, tgt, n = batches.get(i)
            step += 1
            opt.zero_grad(set_to_none=True)
            if n == 0:
                # seqrec: loss 0, zero gradients, the optimiser still steps (decay and moments).
                for p in params:
                    p.grad = torch.zeros_like(p)
            else:
                loss = step_fn(inp, rows, tgt)
                loss.backward()
                loss_sum += loss.detach()
            clip_grad_norm(params, args.clip)
            lr = lr_at(step, args.lr, warmup, total)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            tokens += n
        sync()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        train_tokens += tokens
        rep = {"epoch": epoch + 1, "loss": float(loss_sum) / per_epoch, "seconds": seconds,
               "tokens": tokens, "valid": None}
        last = epoch + 1 == args.epochs
        if d["valid"] and (last or (args.eval_every > 0 and (epoch + 1) % args.eval_every == 0)):
            rep["valid"] = evaluate(model, d["valid"], L, device,
                                    exclude_history=args.exclude_history)
        history.append(rep)
        v = rep["valid"]
        log(f"epoch {epoch + 1}/{args.epochs}  loss {rep['loss']:.4f}  {seconds:.1f}s  "
            f"{tokens / seconds if seconds else 0:.0f} tok/s"
            + (f"  valid mrr@10 {v['mrr@10']:.4f} ndcg@10 {v['ndcg@10']:.4f} hr@10 {v['hr@10']:.4f}"
               if v else ""))
    train_peak_cuda = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    valid = evaluate(model, d["valid"], L, device, exclude_history=args.exclude_history)
    test = evaluate(model, d["test"], L, device, exclude_history=args.exclude_history)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    tps = train_tokens / train_seconds if train_seconds > 0 else 0.0
    result = {
        "implementation": ("pytorch-compile" if args.compile else "pytorch-eager")
                          + ("-bf16" if args.bf16 else ""),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "optimizer": f"AdamW ({opt_kind})",
        "valid": valid,
        "test": test,
        "epochs": args.epochs,
        "steps": step,
        "train_seconds": train_seconds,
        "train_tokens": train_tokens,
        "train_tokens_per_second": tps,
        "seconds_per_epoch": train_seconds / args.epochs if args.epochs else 0.0,
        "warmup_seconds": warm_seconds,
        "compiled_graphs": {"after_warmup": graphs_after_warmup, "at_end": compiled_graphs()},
        "peak_memory_bytes": train_peak_cuda if device.type == "cuda" else rss,
        "peak_memory_kind": "torch.cuda.max_memory_allocated (training)" if device.type == "cuda"
                            else "peak RSS (ru_maxrss, whole process)",
        "peak_rss_bytes": rss,
        "rss_before_training_bytes": baseline_rss,
        "parameters": n_params,
        "flops_per_token": fl,
        "achieved_gflops": {"model": fl["model"] * tps / 1e9,
                            "executed": fl["executed"] * tps / 1e9},
        "data": {"source": d["source"], "users": d["users"], "items": d["items"],
                 "interactions": d["interactions"], "train_sequences": int(len(d["train_inputs"])),
                 "valid": len(d["valid"]), "test": len(d["test"]), "dropped_users": d["dropped"],
                 "positions_per_epoch": int(d["train_inputs"].size),
                 "scored_per_epoch": scored_per_epoch, "batches_per_epoch": per_epoch},
        "history": history,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        "wall_seconds": time.perf_counter() - t_start,
    }
    result["config"]["ffn_dim"] = ffn
    if args.out:
        write_json_atomic(args.out, result)
    return (result, model) if return_model else result


def main(argv=None):
    args = parse_args(argv)
    r = run(args)
    if not args.quiet:
        for split in ("valid", "test"):
            m = r[split]
            if m:
                print(f"{split:5s} users {m['users']:6d}  MRR@10 {m['mrr@10']:.4f}  "
                      f"NDCG@10 {m['ndcg@10']:.4f}  HR@10 {m['hr@10']:.4f}")
        print(f"trained {r['epochs']} epochs in {r['train_seconds']:.1f} s, "
              f"{r['train_tokens_per_second']:.0f} train tokens/s, peak memory "
              f"{r['peak_memory_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
