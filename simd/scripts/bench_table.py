#!/usr/bin/env python3
"""Print the percore-simd criterion results as Markdown tables (GiB/s from the median time).

Run after `cargo bench -p percore-simd`; reads target/criterion/<group>/<bench>/<size>/new/.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
SIZES = ["4KiB", "64KiB", "1MiB"]
BYTES = {"4KiB": 4 << 10, "64KiB": 64 << 10, "1MiB": 1 << 20, "8": 8, "125": 125}


def gibs(group, bench, size):
    est = root / group / bench / size / "new" / "estimates.json"
    if not est.exists():
        return None
    ns = json.loads(est.read_text())["median"]["point_estimate"]
    return BYTES[size] / ns * 1e9 / (1 << 30)


def table(group, sizes, baseline, ratio_to):
    benches = sorted(p.name for p in (root / group).iterdir() if p.is_dir() and p.name != "report")
    # Baseline first, then the rest in a stable order.
    benches.sort(key=lambda b: (b != baseline, b))
    print(f"\n**{group}** (GiB/s, median; ratio to `{ratio_to}`)\n")
    print("| bench | " + " | ".join(sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for b in benches:
        cells = []
        for s in sizes:
            v, ref = gibs(group, b, s), gibs(group, ratio_to, s)
            if v is None:
                cells.append("–")
            elif ref and b not in (ratio_to, "copy_from_slice"):
                cells.append(f"{v:.1f} ({v / ref:.2f}×)")
            else:
                cells.append(f"{v:.1f}")
        print(f"| {b} | " + " | ".join(cells) + " |")


unmask_selected = next((p.name for p in (root / "unmask").iterdir() if p.name.startswith("unmask(")), None)
table("unmask", SIZES, "copy_from_slice", "copy_from_slice")
if (root / "unmask_small").exists():
    table("unmask_small", ["8", "125"], "copy_from_slice", "copy_from_slice")
for g in ["utf8_ascii", "utf8_mixed"]:
    table(g, SIZES, "copy_from_slice", "simdutf8_basic")
