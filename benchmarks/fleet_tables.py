"""How long the fleet tables of a large cluster run take to build, on synthetic shards.

    python benchmarks/fleet_tables.py [--nodes 64] [--gpus 8] [--out DIR] [--keep]

Writes a synthetic run (benchlib.cluster._synthetic: 2 arms, 3 cases, 5 invocations of 20 samples
per slot, five telemetry polls per invocation; not measurements) as shards on disk, each as its task
leaves it once consolidated (two files per shard; the per-invocation files, which load_fleet does
not read when consolidations are current, are not written), then times, each once: ``collect`` (merge the shards' manifests), ``load_fleet`` (every results and
telemetry file), and the fleet tables: per-slot comparisons (hierarchical bootstrap, 2000
replicates), variance components (500 node resamplings), indicators, outlier slots and slow nodes.
Target (issue 19): the tables of a 64-node fleet in under a minute, from the shards on disk.
Prints one line per phase, wall and CPU time of this process (on a shared machine the wall time
also holds other processes' load); with --out, writes them as JSON there ($OUT by default).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import fleet  # noqa: E402
from benchlib.cluster import shards  # noqa: E402
from benchlib.cluster._synthetic import FleetSpec, simulate, write_run  # noqa: E402
from benchlib.cluster.load import load_fleet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic run directory")
    args = parser.parse_args()
    spec = FleetSpec(nodes=args.nodes, gpus=args.gpus, slow={(3, None): 0.8, (17, 5): 0.7},
                     clock_stuck={(29, None): 0.6}, noisy={11: 4.0}, seed=1, run_id="fleet-benchmark")
    work = Path(tempfile.mkdtemp(prefix="fleet-tables-"))
    timings: dict[str, float] = {}

    cpu: dict[str, float] = {}

    def timed(name: str, call):
        began, began_cpu = time.perf_counter(), time.process_time()
        value = call()
        timings[name] = round(time.perf_counter() - began, 2)
        cpu[name] = round(time.process_time() - began_cpu, 2)
        print(f"{name:<22} {timings[name]:8.2f} s wall {cpu[name]:8.2f} s CPU", flush=True)
        return value

    try:
        results, telemetry = timed("simulate", lambda: simulate(spec))
        run = timed("write shards", lambda: write_run(work / spec.run_id, spec, results, telemetry,
                                                      invocation_files=False))
        del results, telemetry
        collected = timed("collect", lambda: shards.collect(run))
        results, telemetry = timed("load_fleet", lambda: load_fleet(run))
        comparisons = timed("slot_comparisons", lambda: fleet.slot_comparisons(results))
        variance = timed("variance_components", lambda: fleet.variance_components(results))
        indicators = timed("slot_indicators", lambda: fleet.slot_indicators(results, telemetry))
        outliers = timed("outlier_slots", lambda: fleet.outlier_slots(indicators))
        slow = timed("slow_nodes", lambda: fleet.slow_nodes(outliers))
        tables = sum(timings[key] for key in ("load_fleet", "slot_comparisons", "variance_components",
                                              "slot_indicators", "outlier_slots", "slow_nodes"))
        from_disk = tables + timings["collect"]
        from_disk_cpu = sum(cpu[key] for key in ("collect", "load_fleet", "slot_comparisons", "variance_components",
                                                 "slot_indicators", "outlier_slots", "slow_nodes"))
        print(f"{'collect + tables':<22} {from_disk:8.2f} s wall {from_disk_cpu:8.2f} s CPU  ({args.nodes} nodes x {args.gpus} GPUs, "
              f"{len(collected.manifest.invocations)} invocations, {len(results)} samples, {len(telemetry)} polls; "
              f"{len(comparisons)} comparison rows, {len(variance)} variance rows, slow nodes: "
              f"{', '.join(slow['node'])})")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "fleet_tables.json").write_text(json.dumps(
                {"nodes": args.nodes, "gpus": args.gpus, "timings_s": timings, "cpu_s": cpu,
                 "collect_and_tables_s": from_disk, "collect_and_tables_cpu_s": from_disk_cpu,
                 "cpus": os.cpu_count(), "load_average": os.getloadavg()}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
