#!/usr/bin/env python3
"""Per-function instructions per request from callgrind profiles kept by bench/callgrind.sh (KEEP=dir):
(profile with N2 requests - profile with N1 requests) / (N2 - N1), self cost, largest first.
Usage: bench/cg-diff.py dir/cg.hit.1200 dir/cg.hit.200 [N2 N1] [--inclusive] [--top 40]
       bench/cg-diff.py --builds before-dir after-dir [mode, default miss] [--inclusive] [--top 40]
         (two builds side by side: the functions whose cost per request moved most, both ways)"""
import re
import subprocess
import sys


def costs(path, inclusive):
    args = ["callgrind_annotate", "--threshold=100", path]
    if inclusive:
        args.insert(1, "--inclusive=yes")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in m.group(2):
            # "file:function [object]": the file part ends at the first single colon.
            name = re.sub(r"^[^:]*:(?!:)", "", m.group(2).strip(), count=1)
            name = re.sub(r" \[[^\]]*\]$", "", name)
            table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table


def per_request(big, small, n2, n1, inclusive):
    a, b = costs(big, inclusive), costs(small, inclusive)
    return {k: (a.get(k, 0) - b.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}


def main():
    inclusive = "--inclusive" in sys.argv
    top = 40
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
    argv = [a for i, a in enumerate(sys.argv[1:], 1)
            if not a.startswith("--") and sys.argv[i - 1] != "--top"]
    if "--builds" in sys.argv:
        before_dir, after_dir = argv[0], argv[1]
        mode = argv[2] if len(argv) > 2 else "miss"
        before, after = (per_request(f"{d}/cg.{mode}.1200", f"{d}/cg.{mode}.200", 1200, 200, inclusive)
                         for d in (before_dir, after_dir))
        rows = sorted((after.get(k, 0) - before.get(k, 0), k) for k in set(before) | set(after))
        if not inclusive:
            print(f"{sum(after.values()) - sum(before.values()):10.0f}  total change per request")
        print(f"{'change':>10}  {'before':>8}  {'after':>8}  function")
        half = max(top // 2, 1)
        for delta, name in rows[:half] + [r for r in rows[-half:] if r not in rows[:half]]:
            if abs(delta) >= 1:
                print(f"{delta:10.0f}  {before.get(name, 0):8.0f}  {after.get(name, 0):8.0f}  {name[:120]}")
        return
    big, small = argv[0], argv[1]
    n2, n1 = (int(argv[2]), int(argv[3])) if len(argv) >= 4 else (1200, 200)
    table = per_request(big, small, n2, n1, inclusive)
    rows = sorted(((v, k) for k, v in table.items()), reverse=True)
    if not inclusive:
        print(f"{sum(table.values()):10.0f}  total per request")
    for per, name in rows[:top]:
        print(f"{per:10.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
