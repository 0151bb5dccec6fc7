#!/usr/bin/env python3
"""Per-function instructions per request from two callgrind profiles of one build (bench/callgrind.sh
with KEEP=dir): (profile with N2 requests - profile with N1 requests) / (N2 - N1), self cost, largest
first. Usage: bench/cg-diff.py dir/cg.hit.1200 dir/cg.hit.200 [N2 N1] [--inclusive] [--top 40]"""
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
        if m:
            name = re.sub(r"^\S+:", "", m.group(2).strip(), count=1) if ":" in m.group(2) else m.group(2)
            name = re.sub(r" \[[^\]]*\]$", "", name)
            table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table


def main():
    argv = [a for a in sys.argv[1:] if not a.startswith("--")]
    inclusive = "--inclusive" in sys.argv
    top = 40
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
        argv = [a for a in argv if a != str(top)]
    big, small = argv[0], argv[1]
    n2, n1 = (int(argv[2]), int(argv[3])) if len(argv) >= 4 else (1200, 200)
    a, b = costs(big, inclusive), costs(small, inclusive)
    rows = sorted(((a.get(k, 0) - b.get(k, 0)) / (n2 - n1), k) for k in set(a) | set(b))
    rows.reverse()
    total = sum(r[0] for r in rows) if not inclusive else None
    if total is not None:
        print(f"{total:10.0f}  total per request")
    for per, name in rows[:top]:
        print(f"{per:10.0f}  {name[:150]}")


main()
