"""Per-invocation harness overhead of each arm, from a run's manifest.

    python benchmarks/harness_overhead.py outputs/<run_id> [--json PATH]

For every (benchmark, case) the wall time of each invocation (launch, kernel start, imports,
fingerprint, the work, writing files) is taken from the manifest; the overhead of an arm is the
median over cases of (median arm time - median baseline time). The baseline is the manifest's first
arm. Interleaving makes the difference fair: both arms ran the same cases in alternation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.manifest import COMPLETE, Manifest  # noqa: E402


def overhead_by_arm(manifest: Manifest) -> dict[str, dict[str, float]]:
    durations: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for inv in manifest.invocations:
        if inv.status == COMPLETE and inv.duration_s is not None:
            durations[(inv.benchmark, inv.case)][inv.arm].append(inv.duration_s)
    baseline = manifest.arms[0]["name"]
    figures: dict[str, dict[str, float]] = {}
    for arm in (spec["name"] for spec in manifest.arms):
        medians = [statistics.median(times[arm]) for times in durations.values() if times.get(arm)]
        deltas = [statistics.median(times[arm]) - statistics.median(times[baseline])
                  for times in durations.values() if times.get(arm) and times.get(baseline)]
        if medians:
            figures[arm] = {"median_invocation_s": statistics.median(medians),
                            "median_overhead_vs_baseline_s": statistics.median(deltas) if deltas else float("nan"),
                            "cases": len(medians)}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    manifest = Manifest.load(args.run_dir)
    figures = overhead_by_arm(manifest)
    print(f"run {manifest.run_id} ({manifest.suite}); baseline {manifest.arms[0]['name']}")
    for arm, row in figures.items():
        print(f"  {arm:<18} median invocation {row['median_invocation_s']:6.2f} s, "
              f"overhead vs baseline {row['median_overhead_vs_baseline_s']:+6.2f} s over {row['cases']} cases")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
