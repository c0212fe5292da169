"""The collectives workload: nccl-tests' formulas and formats, NCCL log parsing, and real gloo runs on the CPU.

The NCCL and nccl-tests lines below are real output quoted in public issues (the URL above each);
the bus-bandwidth formulas are checked against hand-computed numbers and against the figures a real
``all_reduce_perf`` printed. The workload itself runs for real: 2 and 3 gloo processes on the CPU,
a rank killed with SIGKILL, a sweep that outlives its timeout.
"""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from benchlib import nccl, run_benchmark
from benchlib._collectives_worker import Buffers, expected, pattern
from benchlib.device import Device
from benchlib.errors import ParamsError
from benchlib.params import validate
from benchlib.workloads import collectives
from benchlib.workloads.collectives import CollectivesParams

REPO = Path(__file__).resolve().parent.parent
CPU = Device("cpu", "cpu")
FAST = dict(device="cpu", warmup=1, min_samples=3, max_samples=8, max_time_s=0.2, target_rel_ci=0.5, telemetry_hz=0)

# --------------------------------------------------------------------------- bus bandwidth and sizes


@pytest.mark.parametrize("op, ranks, factor", [
    ("all_reduce", 2, 1.0), ("all_reduce", 4, 1.5), ("all_reduce", 8, 1.75),
    ("all_gather", 2, 0.5), ("all_gather", 8, 0.875), ("reduce_scatter", 4, 0.75),
    ("broadcast", 8, 1.0), ("all_reduce", 1, 0.0),
])
def test_busbw_factor_is_nccl_tests_correction(op, ranks, factor):
    assert nccl.busbw_factor(op, ranks) == pytest.approx(factor)


def test_bandwidths_by_hand():
    # all-reduce of 1 GiB fp32 over 8 ranks in 10 ms: algbw = 2^30 / 0.01 = 107.374 GB/s, busbw x 1.75
    geometry = nccl.shape("all_reduce", 1 << 30, 4, 8)
    assert geometry.bytes == 1 << 30
    assert geometry.algbw(0.010) / 1e9 == pytest.approx(107.3741824)
    assert geometry.busbw(0.010) / 1e9 == pytest.approx(187.9048192)
    # all-gather of 1 GiB over 8 ranks: each rank sends 2^30/8 bytes, S is the whole 1 GiB output
    gather = nccl.shape("all_gather", 1 << 30, 4, 8)
    assert (gather.send_elements, gather.recv_elements) == (1 << 25, 1 << 28)
    assert gather.busbw(0.005) / 1e9 == pytest.approx(2**30 / 0.005 / 1e9 * 7 / 8)
    # broadcast: busbw = algbw
    cast = nccl.shape("broadcast", 4096, 4, 3)
    assert cast.busbw(1e-5) == cast.algbw(1e-5) == pytest.approx(409.6e6)


def test_sizes_follow_nccl_tests_rounding():
    # reduce-scatter of 1000 B fp32 over 3 ranks: count 250, per rank 83 rounded down to 16 B (80 elements)
    scatter = nccl.shape("reduce_scatter", 1000, 4, 3)
    assert (scatter.send_elements, scatter.recv_elements, scatter.bytes) == (240, 80, 960)
    # bf16: 16 B = 8 elements; 8 B fp32 over 2 ranks leaves nothing per rank
    assert nccl.shape("all_gather", 100, 2, 2).send_elements == 24
    assert nccl.shape("all_gather", 8, 4, 2).empty
    assert not nccl.shape("all_reduce", 8, 4, 2).empty
    assert nccl.size_sweep(8, 1 << 30, 2)[-1] == 1 << 30 and len(nccl.size_sweep(8, 1 << 30, 2)) == 28
    assert nccl.size_sweep(8, 262144, 8) == [8, 64, 512, 4096, 32768, 262144]
    assert [nccl.size_label(n) for n in (8, 3000, 8192, 1 << 20, 3 << 20, 1 << 30)] == [
        "8B", "3000B", "8KiB", "1MiB", "3MiB", "1GiB"]


# A real all_reduce_perf run on H100s (2 nodes x 2 GPUs, -n 30) as published in a public repository's notes,
# trimmed to 10 of its 31 sizes: the nccl-tests 2.x table, 13 fields per data line
NCCL_TESTS_H100 = """\
cnh@dgx-06:~/nccl-test/nccl-tests$ mpirun -x LD_LIBRARY_PATH --hostfile myhosts -n 2  ./build/all_reduce_perf -b 8 -e 8192M -f 2 -g 2 -n 30
# nThread 1 nGpus 2 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5 iters: 30 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid 1462688 on     dgx-06 device  0 [0x1b] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid 1462688 on     dgx-06 device  1 [0x43] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid 2485837 on     dgx-07 device  0 [0x1b] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid 2485837 on     dgx-07 device  1 [0x43] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place          
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       
           8             2     float     sum      -1    16.03    0.00    0.00      0    15.73    0.00    0.00      0
          16             4     float     sum      -1    15.67    0.00    0.00      0    15.84    0.00    0.00      0
        4096          1024     float     sum      -1    19.19    0.21    0.32      0    18.84    0.22    0.33      0
     1048576        262144     float     sum      -1    79.10   13.26   19.88      0    67.46   15.54   23.31      0
    16777216       4194304     float     sum      -1    317.1   52.91   79.36      0    322.7   52.00   77.99      0
   134217728      33554432     float     sum      -1   1479.2   90.74  136.10      0   1480.2   90.67  136.01      0
   536870912     134217728     float     sum      -1   5561.2   96.54  144.81      0   5561.2   96.54  144.81      0
  1073741824     268435456     float     sum      -1    10996   97.65  146.47      0    11010   97.52  146.28      0
  2147483648     536870912     float     sum      -1    21872   98.18  147.27      0    21933   97.91  146.87      0
  8589934592    2147483648     float     sum      -1    87072   98.65  147.98      0    87098   98.62  147.94      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 48.0299 
#
"""


def test_perf_table_parses_a_real_all_reduce_perf_output():
    table = nccl.parse_perf_table(NCCL_TESTS_H100)
    assert table.ranks == 4 and table.avg_busbw_gbs == pytest.approx(48.0299) and table.out_of_bounds == 0
    assert len(table.rows) == 10
    row = table.at(1 << 30)
    assert (row.count, row.dtype, row.redop, row.root) == (268435456, "float", "sum", -1)
    assert (row.time_us, row.algbw_gbs, row.busbw_gbs, row.wrong) == (10996, 97.65, 146.47, 0)
    assert (row.inplace_time_us, row.inplace_busbw_gbs) == (11010, 146.28)


def test_our_formulas_reproduce_the_figures_nccl_tests_printed():
    """size / time and the 4-rank factor give back every algbw and busbw of the real table (to its rounding)."""
    table = nccl.parse_perf_table(NCCL_TESTS_H100)
    for row in table.rows:
        geometry = nccl.shape("all_reduce", row.size_bytes, 4, table.ranks)
        assert geometry.bytes == row.size_bytes and geometry.send_elements == row.count
        for time_us, algbw, busbw in ((row.time_us, row.algbw_gbs, row.busbw_gbs),
                                      (row.inplace_time_us, row.inplace_algbw_gbs, row.inplace_busbw_gbs)):
            # the table prints times to 4-5 significant digits and bandwidths to 2 decimals
            tolerance = dict(rel=2e-3, abs=0.006)
            assert geometry.algbw(time_us * 1e-6) / 1e9 == pytest.approx(algbw, **tolerance)
            assert geometry.busbw(time_us * 1e-6) / 1e9 == pytest.approx(busbw, **tolerance)


def test_perf_table_tolerates_launcher_prefixes_and_nccl_lines():
    # https://github.com/aws-samples (srun --label "0: " prefixes); NCCL INFO lines interleaved with the table
    text = """\
0: #       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
0:            8             2     float     sum      -1    69.12    0.00    0.00      0    72.43    0.00    0.00      0
H20-GPU-06:4015539:4015652 [0] NCCL INFO comm 0x5a39240 rank 2 nranks 4 cudaDev 0 nvmlDev 0 busId 18000 commId 0xf021d9037f9243d8 - Init COMPLETE
0:   1073741824     268435456     float     sum      -1    26217   40.96   76.79      0    26194   40.99   76.86      0
"""
    table = nccl.parse_perf_table(text)
    assert [row.size_bytes for row in table.rows] == [8, 1 << 30]
    assert table.at(1 << 30).busbw_gbs == 76.79
    with pytest.raises(ValueError, match="no nccl-tests data line"):
        nccl.parse_perf_table("# nThread 1 nGpus 8\nNCCL INFO Bootstrap\n")


# --------------------------------------------------------------------------- NCCL_DEBUG=INFO logs

# https://github.com/NVIDIA/nccl/issues/1189 (H20, 2 nodes: P2P/CUMEM inside a node, NET/IB/GDRDMA between)
LOG_P2P_IB = """\
H20-GPU-06:4015539:4015652 [0] NCCL INFO Channel 07/0 : 0[0] -> 2[0] [receive] via NET/IB/3/GDRDMA
H20-GPU-06:4015540:4015653 [1] NCCL INFO Channel 00/0 : 1[1] -> 3[1] [receive] via NET/IB/2/GDRDMA
H20-GPU-06:4015540:4015653 [1] NCCL INFO Channel 01/0 : 3[1] -> 1[1] [send] via NET/IB/2/GDRDMA
H20-GPU-06:4015540:4015653 [1] NCCL INFO Channel 00/0 : 3[1] -> 2[0] via P2P/CUMEM
H20-GPU-05:1789225:1789736 [1] NCCL INFO Channel 01/0 : 1[1] -> 0[0] via P2P/CUMEM
H20-GPU-05:1789225:1789736 [1] NCCL INFO Channel 03/0 : 1[1] -> 0[0] via P2P/CUMEM
H20-GPU-05:1789225:1789736 [1] NCCL INFO Channel 03/0 : 1[1] -> 0[0] via P2P/CUMEM
H20-GPU-06:4015540:4015653 [1] NCCL INFO 8 coll channels, 0 collnet channels, 0 nvls channels, 8 p2p channels, 2 p2p channels per peer
"""
# https://github.com/NVIDIA/nccl-tests/issues/166 (SHM between some GPUs, NET/Socket between nodes)
LOG_SHM_SOCKET = """\
ubuntu:9621:9692 [7] NCCL INFO Channel 14/0 : 15[7] -> 0[0] [send] via NET/Socket/0
ubuntu:9621:9692 [7] NCCL INFO Channel 15/0 : 15[7] -> 0[0] [send] via NET/Socket/0
ubuntu:39964:40050 [6] NCCL INFO Channel 09 : 6[6] -> 7[7] via SHM/direct/direct
ubuntu:9621:9688 [3] NCCL INFO Channel 05 : 11[3] -> 12[4] via SHM/direct/direct
ubuntu:9621:9688 [3] NCCL INFO Channel 06 : 11[3] -> 12[4] via SHM/direct/direct
"""
# https://github.com/NVIDIA/Megatron-LM/issues/516 (legacy CUDA IPC, P2P read) and
# https://github.com/NVIDIA/nccl/issues/1053 (the network line); https://github.com/NVIDIA/nccl/issues/797
# (an IB plugin's name); mpirun --tag-output "[1] " prefixes from https://github.com/NVIDIA/nccl/issues/1232
LOG_MISC = """\
09677202c889:5278:5702 [3] NCCL INFO Channel 12/0 : 3[201d0] -> 2[201c0] via P2P/IPC/read
09677202c889:5280:5700 [5] NCCL INFO Channel 12/0 : 5[901d0] -> 4[901c0] via P2P/IPC/read
axa:3048391:3048566 [0] NCCL INFO NET/Socket : Using [0]lo:127.0.0.1<0>
axa:3048391:3048566 [0] NCCL INFO Using network Socket
nvidia-p2p-rdma-test-64ff5b88b-kndtr:37188:37280 [0] NCCL INFO Channel 06/0 : 0[41000] -> 1[42000] [receive] via NET/IBext/0
[1] node2:22555:22555 [0] NCCL INFO Channel 00/0 : 2[1] -> 1[0] [receive] via NET/Socket/0
[2] node0:13572:13572 [1] NCCL INFO Channel 00 : 2[1] -> 0[0] via SHM/direct/direct
"""


def test_transports_are_counted_per_connection_from_real_lines():
    log = nccl.parse_debug_log(LOG_P2P_IB.splitlines())
    assert log.counts() == {"p2p": 3, "shm": 0, "net_socket": 0, "net_ib": 3, "net_other": 0, "other": 0}
    assert log.transports() == {"NET/IB/GDRDMA": 3, "P2P/CUMEM": 3}  # the repeated line counts once
    assert log.summary() == "NET/IB/GDRDMA x 3; P2P/CUMEM x 3"
    log = nccl.parse_debug_log(LOG_SHM_SOCKET.splitlines())
    assert log.counts()["shm"] == 3 and log.counts()["net_socket"] == 2
    assert log.transports() == {"SHM/direct/direct": 3, "NET/Socket": 2}


def test_ipc_ib_plugins_network_and_launcher_prefixes():
    log = nccl.parse_debug_log(LOG_MISC.splitlines())
    assert log.counts() == {"p2p": 2, "shm": 1, "net_socket": 1, "net_ib": 1, "net_other": 0, "other": 0}
    assert "P2P/IPC/read" in log.transports() and "NET/IBext" in log.transports()
    assert log.networks == {"Socket"}
    connection = next(c for c in log.connections if c.via == "P2P/IPC/read" and c.src_rank == 3)
    assert (connection.channel, connection.conn_index, connection.dst_rank, connection.direction) == (12, 0, 2, "")


def test_version_and_warnings_are_kept():
    # https://github.com/pytorch/pytorch/pull/40622 (NCCL 2.7.3 in a container with a 64 MiB /dev/shm)
    lines = [
        "5135fc87695d:126318:126318 [0] misc/ibvwrap.cc:63 NCCL WARN Failed to open libibverbs.so[.1]",
        "NCCL version 2.7.3+cuda10.2",
        "5135fc87695d:126319:126336 [1] include/shm.h:28 NCCL WARN Call to posix_fallocate failed : No space left on device",
    ]
    log = nccl.parse_debug_log(lines)
    assert log.versions == {"2.7.3+cuda10.2"}
    assert log.warnings == ["Failed to open libibverbs.so[.1]", "Call to posix_fallocate failed : No space left on device"]
    assert log.summary() == "no channel connection logged; NCCL 2.7.3+cuda10.2"


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("text", [
    # https://github.com/NVIDIA/nccl/issues/290 and /342 (NCCL 2.5-2.7)
    "gpu2-ru7:2143:2561 [1] include/shm.h:28 NCCL WARN Call to posix_fallocate failed : No space left on device",
    # https://github.com/pytorch/ci-infra/pull/490 (NCCL 2.2x, misc/shmutils.cc)
    "[0] misc/shmutils.cc:88 NCCL WARN Error: failed to extend /dev/shm/nccl-WU88OE to 9637892 bytes, error: No "
    "space left on device (28)",
    # https://github.com/NVIDIA/nccl-tests/issues/166
    "ubuntu:9621:9688 [3] misc/shmutils.cc:112 NCCL WARN Error while creating shared memory segment "
    "/dev/shm/nccl-KWfVyt (size 5967872)",
])
def test_shared_memory_failures_are_named_with_the_fix(text):
    diagnosis = nccl.diagnose_failure([text])
    assert diagnosis is not None and "/dev/shm" in diagnosis.reason
    assert "--shm-size=1g" in diagnosis.fix and "--ipc=host" in diagnosis.fix
    if "No space left" in text:
        assert "No space left on device" in diagnosis.reason


def test_other_failures_are_not_blamed_on_shm():
    # https://github.com/NVIDIA/nccl/issues/1232 (a peer went away) and a gloo timeout
    assert nccl.diagnose_failure(["node0 NCCL WARN socketProgress: Connection closed by remote peer node2<42830>"]) is None
    assert nccl.diagnose_failure(["RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error"]) is None


def test_failure_message_puts_reason_shm_size_and_fix_first():
    params = CollectivesParams(device="cuda", op="all_reduce")
    warn = "Error while creating shared memory segment /dev/shm/nccl-pZafXL (size 7340384), error: No space left on device (28)"
    outcome = collectives.JobOutcome(
        records=[{"rank": 0, "error": "DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1, unhandled system error"}],
        exit_codes=[1, -9], logs=["", ""], debug=nccl.parse_debug_log([f"h:1:2 [0] misc/shmutils.cc:114 NCCL WARN {warn}"]),
        timed_out=False, killed=True)
    message = collectives.failure_message(params, collectives.Plan("nccl", 2), outcome, (64 << 20, 60 << 20))
    assert message.startswith("all_reduce over 2 ranks (nccl) failed (rank 0: exit code 1, rank 1: killed by SIGKILL); "
                              "NCCL could not create a shared-memory segment in /dev/shm (No space left on device); "
                              "/dev/shm: 60.0 MiB free of 64.0 MiB before the run; fix: run the container with "
                              "--shm-size=1g or --ipc=host")
    assert "unhandled system error" in message and "\n" not in message


# --------------------------------------------------------------------------- nvidia-smi topo -m

# https://github.com/noonghunna/club-3090/issues/1229 (2 GPUs, tab-separated, recent driver)
TOPO_2 = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\nGPU0\t X \tPHB\t0-63\t0\t\tN/A\nGPU1\tPHB\t X \t0-63\t0\t\tN/A\n\nLegend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks\n"
# https://github.com/kubernetes/kubernetes/issues/53497 (8 GPUs and a NIC, space-separated, older driver)
TOPO_8 = """\
        GPU0    GPU1    GPU2    GPU3    GPU4    GPU5    GPU6    GPU7    mlx4_0  CPU Affinity
GPU0     X      PIX     PHB     PHB     SYS     SYS     SYS     SYS     PHB     0-9,20-29
GPU1    PIX      X      PHB     PHB     SYS     SYS     SYS     SYS     PHB     0-9,20-29
GPU4    SYS     SYS     SYS     SYS      X      PIX     PHB     PHB     SYS     10-19,30-39
"""


def test_topology_matrix_from_real_outputs():
    assert nccl.parse_topology(TOPO_2) == {"GPU0": {"GPU0": "X", "GPU1": "PHB"}, "GPU1": {"GPU0": "PHB", "GPU1": "X"}}
    matrix = nccl.parse_topology(TOPO_8)
    assert matrix["GPU0"]["GPU1"] == "PIX" and matrix["GPU0"]["mlx4_0"] == "PHB" and matrix["GPU4"]["GPU5"] == "PIX"
    assert nccl.parse_topology("No devices were found\n") == {}


# --------------------------------------------------------------------------- the check's arithmetic


@pytest.mark.parametrize("op", nccl.OPS)
@pytest.mark.parametrize("ranks", [2, 3])
def test_expected_results_match_the_collective_done_by_hand(op, ranks):
    """expected() against each collective computed element by element from the ranks' inputs."""
    geometry = nccl.shape(op, 240, 4, ranks)
    inputs = [pattern(torch, q, 0, geometry.send_elements, torch.int64, "cpu").tolist() for q in range(ranks)]
    for rank in range(ranks):
        if op == "all_reduce":
            want = [sum(values) for values in zip(*inputs)]
        elif op == "broadcast":
            want = inputs[0]
        elif op == "all_gather":
            want = [value for q in range(ranks) for value in inputs[q]]
        else:
            base = geometry.recv_elements
            want = [sum(inputs[q][rank * base + j] for q in range(ranks)) for j in range(base)]
        per_rank = geometry.send_elements if op == "all_gather" else geometry.recv_elements
        got = expected(torch, op, rank, ranks, 0, geometry.recv_elements, per_rank, torch.int64, "cpu")
        assert got.tolist() == want


def test_the_check_counts_a_planted_wrong_element():
    import torch.distributed as dist

    geometry = nccl.shape("all_gather", 4096, 4, 2)
    buffers = Buffers(torch, dist, "all_gather", geometry, 1, torch.float32, "cpu")
    buffers.recv.copy_(expected(torch, "all_gather", 1, 2, 0, geometry.recv_elements, geometry.send_elements,
                                torch.float32, "cpu"))
    assert buffers.wrong_elements() == 0
    buffers.recv[700] += 1
    buffers.recv[1000] = float("nan")
    assert buffers.wrong_elements() == 2


# --------------------------------------------------------------------------- params, notebook, environment


def test_params_refuse_an_empty_sweep_and_unknown_ops():
    with pytest.raises(ParamsError, match="key 'max_bytes' cannot be 4: it must be at least min_bytes"):
        validate(CollectivesParams, {"min_bytes": 8, "max_bytes": 4}, "params/collectives/x.yaml")
    with pytest.raises(ParamsError, match="key 'op' must be one of all_reduce, all_gather, reduce_scatter, broadcast"):
        validate(CollectivesParams, {"op": "alltoall"}, "params/collectives/x.yaml")
    assert CollectivesParams(min_bytes=8, max_bytes=1 << 30).sizes()[-1] == 1 << 30


def test_notebook_parameters_are_the_model_defaults():
    notebook = json.loads((REPO / "notebooks" / "collectives.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}
    fields = CollectivesParams.model_fields
    shown = {key: value for key, value in values.items() if key in fields}
    assert shown == {key: fields[key].default for key in shown}
    assert {"op", "dtype", "min_bytes", "max_bytes", "step_factor", "ranks", "busbw_min_bytes"} <= set(shown)


def test_workers_never_get_nvlink_multicast_unless_asked(tmp_path):
    env, notes = collectives.worker_env(tmp_path, base={"PATH": "/usr/bin"})
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_DEBUG_FILE"].startswith(str(tmp_path))
    env, notes = collectives.worker_env(tmp_path, base={"NCCL_NVLS_ENABLE": "1", "NCCL_DEBUG": "TRACE"})
    assert env["NCCL_NVLS_ENABLE"] == "1" and "NCCL_NVLS_ENABLE=1 (from the environment)" in notes
    assert env["NCCL_DEBUG"] == "TRACE"


def test_one_gpu_or_none_is_planned_without_nccl():
    assert collectives.plan(CollectivesParams(device="cpu"), CPU) == collectives.Plan("gloo", 2)
    assert collectives.plan(CollectivesParams(device="cpu", ranks=3), CPU) == collectives.Plan("gloo", 3)


# --------------------------------------------------------------------------- real runs (gloo on the CPU)


def _ok(result) -> pd.DataFrame:
    frame = result.results
    assert (frame["status"] == "ok").all(), frame.loc[frame["status"] != "ok", "note"].tolist()
    return frame


@pytest.mark.slow
def test_every_collective_runs_checked_on_gloo():
    result = run_benchmark("collectives", op=list(nccl.OPS), min_bytes=64, max_bytes=65536, step_factor=32,
                           busbw_min_bytes=2048, **FAST)
    frame = _ok(result)
    for op in nccl.OPS:
        rows = frame[frame["case"] == f"op={op},dtype=fp32"]
        assert set(rows["metric"]) == {"time@64B", "time@2KiB", "time@64KiB", "busbw@2KiB", "busbw@64KiB", "ranks"}
        times = rows[rows["metric"] == "time@64KiB"].reset_index(drop=True)
        bus = rows[rows["metric"] == "busbw@64KiB"].reset_index(drop=True)
        assert len(times) == len(bus) >= 3
        geometry = nccl.shape(op, 65536, 4, 2)
        assert (times["work"] == geometry.bytes).all()
        assert bus["value"].tolist() == pytest.approx((geometry.bytes * nccl.busbw_factor(op, 2) / times["value"] / 1e9).tolist())
        assert "checked: exact" in times["note"].iloc[0] and "gloo" in times["note"].iloc[0]
        assert rows.loc[rows["metric"] == "ranks", "value"].tolist() == [2.0]


@pytest.mark.slow
def test_three_ranks_and_bf16_keep_nccl_tests_sizes():
    result = run_benchmark("collectives", op="reduce_scatter", dtype="bf16", ranks=3, min_bytes=1000,
                           max_bytes=1000, busbw_min_bytes=1, **FAST)
    frame = _ok(result)
    times = frame[frame["metric"] == "time@1000B"]
    # 1000 B of bf16 = 500 elements; 166 per rank, rounded down to 16 B = 160; S = 160 x 3 x 2 B
    assert (times["work"] == 960).all()
    bus = frame[frame["metric"] == "busbw@1000B"].reset_index(drop=True)
    assert bus["value"].tolist() == pytest.approx((960 * 2 / 3 / times["value"].reset_index(drop=True) / 1e9).tolist())


@pytest.mark.slow
def test_a_sweep_past_its_timeout_fails_the_case_and_leaves_no_process():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = run_benchmark("collectives", min_bytes=8, max_bytes=1 << 20, step_factor=2, timeout_s=1.0,
                           **{**FAST, "max_time_s": 5.0, "max_samples": 100000, "target_rel_ci": 1e-6})
    row = result.results.iloc[0]
    assert row["status"] == "failed", row["note"]
    assert "did not finish within timeout_s=1 s (the ranks were killed)" in row["note"]
    assert "/dev/shm:" in row["note"]
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.slow
def test_a_rank_killed_mid_sweep_fails_the_case_naming_it(monkeypatch):
    """SIGKILL one rank (as the OOM killer would): its peer, stuck in a collective, is stopped after the grace."""
    monkeypatch.setattr(collectives, "PEER_GRACE_S", 2.0)
    params = CollectivesParams(**{**FAST, "max_time_s": 5.0, "max_samples": 100000, "target_rel_ci": 1e-6},
                               min_bytes=8, max_bytes=1 << 20, timeout_s=120.0)
    job_dir = Path(tempfile.mkdtemp(prefix="benchlib-test-"))
    env, _ = collectives.worker_env(job_dir)
    timer = params.timer_config()
    config = {"backend": "gloo", "ranks": 2, "op": "all_reduce", "dtype": "fp32", "sizes": params.sizes(),
              "check": True, "timeout_s": 120.0, "store": str(job_dir / "store"),
              "timer": {"warmup": timer.warmup, "min_samples": timer.min_samples, "max_samples": timer.max_samples,
                        "max_time_s": timer.max_time_s, "min_time_s": 0.0, "target_rel_ci": timer.target_rel_ci,
                        "fixed_samples": None}}

    def kill_rank_1() -> None:
        """Once rank 1's gloo pairs are connected (init done, collectives running), SIGKILL it."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for child in psutil.Process().children(recursive=True):
                try:
                    if child.cmdline()[-2:] == [str(job_dir / "config.json"), "1"] and any(
                            c.status == psutil.CONN_ESTABLISHED for c in child.net_connections("tcp")):
                        time.sleep(0.5)
                        child.kill()
                        return
                except psutil.Error:
                    continue
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    outcome = collectives.run_job(job_dir, config, 2, 120.0, env)
    killer.join()
    assert outcome.exit_codes[1] == -signal.SIGKILL and not outcome.timed_out
    message = collectives.failure_message(params, collectives.Plan("gloo", 2), outcome, None)
    assert "rank 1: killed by SIGKILL" in message and "/dev/shm: not present" in message


# --------------------------------------------------------------------------- benchmarks/collectives_vs_nccl_tests.py

SCRIPT = REPO / "benchmarks" / "collectives_vs_nccl_tests.py"


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BENCHLIB_LOCK_DIR": os.environ.get(
                              "BENCHLIB_LOCK_DIR", tempfile.gettempdir())})


def test_script_says_what_the_build_lacks(tmp_path):
    tarball = tmp_path / "nccl-tests-2.19.6.tar.gz"
    tarball.write_bytes(b"not a tarball")
    done = _script("--nccl-tests-tar", str(tarball), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                   timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    # the first thing this machine lacks: nvcc (CI), NCCL, or (on a GPU host) a real tarball
    assert done.stderr.strip().splitlines()[-1] in (
        "error: nvcc not found: set CUDA_HOME or put the CUDA toolkit's bin on PATH",
        "error: no NCCL headers and library found (nccl.h and libnccl.so): set NCCL_HOME, or install torch's "
        "nvidia-nccl wheel or the libnccl-dev package",
        f"error: {tarball} is not a readable tar archive of the nccl-tests source",
    )


@pytest.mark.slow
@pytest.mark.notebook
def test_script_compares_the_workload_with_a_saved_all_reduce_perf_output(tmp_path):
    """On the CPU: gloo at 8 B..1 MiB against the real H100 table's 1 MiB line (checks the plumbing, not a figure)."""
    saved = tmp_path / "all_reduce_perf.txt"
    saved.write_text(NCCL_TESTS_H100)
    out = tmp_path / "out"
    done = _script("--cpu", "--nccl-tests-output", str(saved), "--arms", "native", "--rounds", "1",
                   "--max-bytes", "1M", "--size", "1M", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["nccl_tests"]["in_place_busbw_gbs"] == 23.31 and figures["nccl_tests"]["out_of_place_busbw_gbs"] == 19.88
    native = figures["arms"]["native"]
    assert native["ranks"] == 2 and native["busbw_gbs"] > 0 and native["failures"] == []
    assert native["difference"] == pytest.approx(native["busbw_gbs"] / 23.31 - 1)
    table = done.stdout.splitlines()
    assert table[0] == "all-reduce bus bandwidth at 1MiB, GB/s, median over rounds"
    assert any(line.startswith("nccl-tests all_reduce_perf, in place") and "23.31" in line and "(reference)" in line
               for line in table)
    assert any(line.startswith("benchlib collectives, native") and line.split()[3] == "2" for line in table)
