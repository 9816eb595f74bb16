#!/usr/bin/env python3
"""Rewrites CUDA sources for the host emulator (tests/emu/include/seqrec_emu/cuda_emu.hpp).

Two constructs of CUDA C++ are not C++, and only these are rewritten:
  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ::seqrec::emu::launch(kernel, [&] { kernel(args); }, grid, block[, smem[, stream]])
  extern __shared__ [__align__(n)] T name[];
      -> T* name = ::seqrec::emu::dynamic_shared<T>();
Line structure is kept (a rewritten launch spans the lines it spanned), so compiler messages
point at the original lines.

Usage: rewrite.py OUT_DIR ROOT FILE...   writes OUT_DIR/<FILE relative to ROOT>, with ".cpp"
appended to a .cu file's name (a C++ compiler takes it by its name); a file whose output already
has the same text is not touched (no rebuild).
"""
import os
import re
import sys

SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+(?:\s*\*)?)\s+(\w+)\s*\[\s*\]\s*;")


class RewriteError(Exception):
    pass


def skip_back_space(s, i):
    while i >= 0 and s[i].isspace():
        i -= 1
    return i


def kernel_start(s, end):
    """Start index of the kernel expression that ends just before index `end` (exclusive)."""
    i = skip_back_space(s, end - 1)
    if i >= 0 and s[i] == ">":  # template arguments: match angle brackets backwards
        depth = 0
        while i >= 0:
            c = s[i]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
                if depth == 0:
                    break
            i -= 1
        if i < 0:
            raise RewriteError("unbalanced template arguments before <<<")
        i = skip_back_space(s, i - 1)
    # identifier, possibly qualified (a::b::c)
    while i >= 0 and (s[i].isalnum() or s[i] in "_:"):
        i -= 1
    start = i + 1
    if start >= end or not (s[start].isalpha() or s[start] in "_:"):
        raise RewriteError("no kernel name before <<<")
    return start


def matching(s, i, open_c, close_c):
    """Index of the bracket closing the one at s[i]."""
    depth = 0
    while i < len(s):
        if s[i] == open_c:
            depth += 1
        elif s[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise RewriteError("unbalanced " + open_c + close_c)


def rewrite(text):
    text = SHARED.sub(lambda m: "%s* %s = ::seqrec::emu::dynamic_shared<%s>();" %
                      (m.group(1), m.group(2), m.group(1)), text)
    out = []
    pos = 0
    while True:
        lt = text.find("<<<", pos)
        if lt < 0:
            break
        line_start = text.rfind("\n", 0, lt) + 1
        if text[line_start:lt].lstrip().startswith("//"):  # in a comment
            out.append(text[pos:lt + 3])
            pos = lt + 3
            continue
        gt = text.find(">>>", lt)
        if gt < 0:
            raise RewriteError("<<< without >>>")
        start = kernel_start(text, lt)
        kernel = text[start:lt].strip()
        config = text[lt + 3:gt]
        p = gt + 3
        while text[p].isspace():
            p += 1
        if text[p] != "(":
            raise RewriteError("launch of %s: no argument list after >>>" % kernel)
        close = matching(text, p, "(", ")")
        args = text[p + 1:close]
        # keep every newline so that later lines keep their numbers
        newlines = "\n" * (text[start:lt].count("\n") + text[gt:p].count("\n"))
        out.append(text[pos:start])
        out.append("::seqrec::emu::launch(%s, [&] { %s(%s); }, %s%s)" %
                   (kernel, kernel, args, config.strip(" "), newlines))
        pos = close + 1
    out.append(text[pos:])
    return "".join(out)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    out_dir, root = argv[1], argv[2]
    for path in argv[3:]:
        rel = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            new = rewrite(text) if path.endswith((".cu", ".cuh")) else text
        except RewriteError as e:
            sys.stderr.write("%s: %s\n" % (path, e))
            return 1
        dst = os.path.join(out_dir, rel + (".cpp" if rel.endswith(".cu") else ""))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            with open(dst, encoding="utf-8") as f:
                if f.read() == new:
                    continue
        except FileNotFoundError:
            pass
        tmp = dst + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
