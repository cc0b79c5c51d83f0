#!/usr/bin/env python3
"""Per-kernel table of an Nsight Compute summary written by scripts/gpu-check.sh's profile step
(`ncu --print-summary per-kernel`, one `=== config:streams:skip` section per run): each kernel's
total time over the profiled launches, its share, launches, mean time, grid and block.

  python3 scripts/ncu_summary.py benches/results/.../ncu.txt
"""
import re
import sys


def sections(text):
    for sec in text.split("=== ")[1:]:
        yield sec.split("\n")[0], sec.split("\n")


def kernels(lines):
    rows, current = [], None
    for line in lines:
        m = re.match(r"  (\S.*) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), .*Invocations (\d+)", line)
        if m:
            current = m
            continue
        t = re.match(r"\s+gpu__time_duration.sum\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if t and current:
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}.get(t.group(1), 1.0)
            mean, launches = float(t.group(4)) * scale, int(current.group(8))
            rows.append((mean * launches, current.group(1)[:70], launches, mean,
                         "x".join(current.group(2, 3, 4)), "x".join(current.group(5, 6, 7))))
            current = None
    return sorted(rows, reverse=True)


def main():
    for name, lines in sections(open(sys.argv[1]).read()):
        rows = kernels(lines)
        total = sum(r[0] for r in rows) or 1.0
        print(f"### {name}: {total:.0f} us over {sum(r[2] for r in rows)} launches")
        print("| kernel | total us | share | launches | mean us | grid | block |")
        print("|---|---|---|---|---|---|---|")
        for t, kernel, n, mean, grid, block in rows:
            print(f"| {kernel} | {t:.0f} | {100 * t / total:.1f}% | {n} | {mean:.2f} | {grid} | {block} |")


if __name__ == "__main__":
    main()
