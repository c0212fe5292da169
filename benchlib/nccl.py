"""NCCL's conventions and outputs, read the way NCCL and nccl-tests write them.

* **Sizes and bus bandwidth** (:func:`shape`, :func:`busbw_factor`): nccl-tests 2.19.6,
  ``doc/PERFORMANCE.md`` and ``src/{all_reduce,all_gather,reduce_scatter,broadcast}.cu``. A test of
  size S bytes moves ``count = S / sizeof(type)`` elements; all-gather and reduce-scatter give each
  rank ``base = (count / n)`` elements rounded down to 16 bytes, and their size is the whole array,
  ``base * n * sizeof(type)``. ``algbw = S / t``; ``busbw = algbw * factor`` with factor
  ``2(n-1)/n`` for all-reduce, ``(n-1)/n`` for all-gather and reduce-scatter, ``1`` for broadcast:
  the bandwidth each rank's link must carry, comparable with the hardware's whatever n is.
* **NCCL_DEBUG=INFO logs** (:func:`parse_debug_log`): the transport of every channel connection
  (``Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read``, ``via SHM/direct/direct``, ``[send] via
  NET/Socket/0``, ``via NET/IB/3/GDRDMA``), the NCCL version, the network, the WARN lines.
* **Failures** (:func:`diagnose_failure`): NCCL's shared-memory errors under a small /dev/shm
  (``posix_fallocate failed: No space left on device``, ``failed to extend /dev/shm/nccl-...``,
  ``Error while creating shared memory segment``) named, with the fix.
* **nccl-tests tables** (:func:`parse_perf_table`) and **``nvidia-smi topo -m``**
  (:func:`parse_topology`).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Iterable

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # the dtypes the collectives workload runs

#: Transport classes a channel connection is counted under (``via P2P/...`` -> "p2p", ...).
TRANSPORT_CLASSES = ("p2p", "shm", "net_socket", "net_ib", "net_other", "other")


def busbw_factor(op: str, ranks: int) -> float:
    """nccl-tests' correction from algorithm to bus bandwidth for ``op`` over ``ranks`` ranks."""
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, not {ranks}")
    factors = {"all_reduce": 2 * (ranks - 1) / ranks, "all_gather": (ranks - 1) / ranks,
               "reduce_scatter": (ranks - 1) / ranks, "broadcast": 1.0}
    if op not in factors:
        raise ValueError(f"unknown collective {op!r}; collectives are {', '.join(OPS)}")
    return factors[op]


@dataclass(frozen=True)
class Shape:
    """The buffers of one collective of a requested size, as nccl-tests sizes them."""

    op: str
    ranks: int
    element_bytes: int
    requested_bytes: int
    send_elements: int  # per rank
    recv_elements: int  # per rank

    @property
    def bytes(self) -> int:
        """nccl-tests' "size" column: the larger buffer, ``max(send, recv) * sizeof(type)``; S in algbw = S/t."""
        return max(self.send_elements, self.recv_elements) * self.element_bytes

    @property
    def empty(self) -> bool:
        return self.send_elements == 0 or self.recv_elements == 0

    def algbw(self, seconds: float) -> float:
        """Bytes per second: S / t."""
        return self.bytes / seconds

    def busbw(self, seconds: float) -> float:
        """Bytes per second on each rank's link: algbw x :func:`busbw_factor`."""
        return self.algbw(seconds) * busbw_factor(self.op, self.ranks)


def shape(op: str, requested_bytes: int, element_bytes: int, ranks: int) -> Shape:
    """Buffers of ``op`` for a test of ``requested_bytes``, by nccl-tests' ``*GetCollByteCount``."""
    busbw_factor(op, ranks)  # validates op and ranks
    count = requested_bytes // element_bytes
    if op in ("all_reduce", "broadcast"):
        return Shape(op, ranks, element_bytes, requested_bytes, count, count)
    base = (count // ranks) & ~(max(16 // element_bytes, 1) - 1)  # per-rank elements, 16-byte aligned
    send, recv = (base, base * ranks) if op == "all_gather" else (base * ranks, base)
    return Shape(op, ranks, element_bytes, requested_bytes, send, recv)


def size_sweep(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """``-b min -e max -f factor``: min, min*factor, ... up to max."""
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def size_label(nbytes: int) -> str:
    """``1073741824`` -> ``1GiB``, ``8192`` -> ``8KiB``, ``3000`` -> ``3000B``: the largest exact unit."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


def nccl_version(torch: ModuleType | None) -> str | None:
    """The NCCL torch is linked with (``"2.27.5"``), or None for a build without NCCL (CPU wheels)."""
    if torch is None or not hasattr(torch._C, "_nccl_version"):
        return None
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


# --------------------------------------------------------------------------- NCCL_DEBUG=INFO logs

_PREFIX = r"^(?P<host>[^\s:]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] "
_CHANNEL = re.compile(
    r"NCCL INFO Channel (?P<channel>\d+)(?:/(?P<conn>\d+))? : (?P<src>\d+)\[(?P<src_dev>[0-9a-fA-F]+)\] -> "
    r"(?P<dst>\d+)\[(?P<dst_dev>[0-9a-fA-F]+)\](?: \[(?P<direction>send|receive)\])? via (?P<via>.+?)\s*$")
_VERSION = re.compile(r"NCCL version (?P<version>\d+\.\d+\.\d+\S*)")
_NETWORK = re.compile(r"NCCL INFO Using network (?P<network>.+?)\s*$")
_WARN = re.compile(r"NCCL WARN (?P<text>.+?)\s*$")


@dataclass(frozen=True)
class Connection:
    """One channel connection as NCCL logged it: ``Channel 02/0 : 1[1] -> 0[0] via P2P/CUMEM/read``."""

    channel: int
    conn_index: int
    src_rank: int
    dst_rank: int
    direction: str  # "send", "receive" or "" (P2P and SHM lines carry none)
    via: str  # e.g. "P2P/CUMEM/read", "SHM/direct/direct", "NET/Socket/0", "NET/IB/3/GDRDMA"

    @property
    def transport_class(self) -> str:
        return transport_class(self.via)


def transport_class(via: str) -> str:
    """``P2P/...`` -> p2p, ``SHM/...`` -> shm, ``NET/Socket/..`` -> net_socket, ``NET/IB...`` -> net_ib."""
    head, _, rest = via.partition("/")
    if head == "P2P":
        return "p2p"
    if head == "SHM":
        return "shm"
    if head == "NET":
        plugin = rest.split("/", 1)[0]
        if plugin == "Socket":
            return "net_socket"
        return "net_ib" if plugin.startswith("IB") else "net_other"
    return "other"


def transport_name(via: str) -> str:
    """The transport without NET's device index: ``NET/IB/3/GDRDMA`` -> ``NET/IB/GDRDMA``."""
    parts = via.split("/")
    if parts[0] == "NET" and len(parts) > 2:
        parts = parts[:2] + [p for p in parts[2:] if not re.fullmatch(r"\d+(\(\d+\))?", p)]
    return "/".join(parts)


@dataclass
class DebugLog:
    """What NCCL_DEBUG=INFO output says about one job (any number of ranks' log files together)."""

    connections: set[Connection] = field(default_factory=set)
    versions: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    lines: int = 0

    def counts(self) -> dict[str, int]:
        """Connections per transport class, every class present (0 where none)."""
        found = Counter(connection.transport_class for connection in self.connections)
        return {name: found.get(name, 0) for name in TRANSPORT_CLASSES}

    def transports(self) -> dict[str, int]:
        """Connections per transport as logged (device indices dropped), most used first, then by name."""
        found = Counter(transport_name(c.via) for c in self.connections)
        return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """One line: ``P2P/CUMEM/read x 48; network Socket; NCCL 2.27.5``."""
        used = "; ".join(f"{name} x {n}" for name, n in self.transports().items()) or "no channel connection logged"
        parts = [used]
        if self.networks:
            parts.append(f"network {', '.join(sorted(self.networks))}")
        if self.versions:
            parts.append(f"NCCL {', '.join(sorted(self.versions))}")
        return "; ".join(parts)


def parse_debug_log(lines: Iterable[str], into: DebugLog | None = None) -> DebugLog:
    """Read NCCL_DEBUG output (any ranks, any order; other lines are ignored) into a :class:`DebugLog`."""
    log = into if into is not None else DebugLog()
    for raw in lines:
        line = raw.rstrip("\n")
        log.lines += 1
        body = re.sub(_PREFIX, "", line)
        channel = _CHANNEL.search(body)
        if channel:
            log.connections.add(Connection(
                int(channel["channel"]), int(channel["conn"] or 0), int(channel["src"]), int(channel["dst"]),
                channel["direction"] or "", channel["via"]))
            continue
        version = _VERSION.search(body)
        if version:
            log.versions.add(version["version"])
        network = _NETWORK.search(body)
        if network:
            log.networks.add(network["network"])
        warning = _WARN.search(body)
        if warning:
            log.warnings.append(warning["text"])
    return log


# --------------------------------------------------------------------------- failures

#: Shared-memory failures NCCL reports (its WARN lines, or the error torch raises with its last
#: error): substring (lower case) -> what it means. The first match wins.
SHM_FAILURES: tuple[tuple[str, str], ...] = (
    ("posix_fallocate", "NCCL could not allocate its shared-memory segment in /dev/shm (No space left on device)"),
    ("failed to extend /dev/shm", "NCCL could not extend its shared-memory segment in /dev/shm"),
    ("error while creating shared memory segment", "NCCL could not create a shared-memory segment in /dev/shm"),
    ("unable to allocate shared memory", "NCCL could not allocate shared memory"),
    ("ncclshmopen", "NCCL could not open a shared-memory segment in /dev/shm"),
)
SHM_FIX = ("run the container with --shm-size=1g or --ipc=host (NCCL_SHM_DISABLE=1 also avoids it, at the cost "
           "of slower transports)")


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    fix: str = ""

    def sentence(self) -> str:
        return f"{self.reason}; fix: {self.fix}" if self.fix else self.reason


def diagnose_failure(texts: Iterable[str]) -> Diagnosis | None:
    """What a failed NCCL job's errors (exception text, WARN lines) say, or None when nothing is known.

    A full /dev/shm is named with its fix; the free space measured before the run goes in the
    caller's message, since "No space left on device" can also come from files other jobs left.
    """
    text = "\n".join(texts).lower()
    for needle, meaning in SHM_FAILURES:
        if needle in text:
            if "no space left on device" in text and "no space left" not in meaning.lower():
                meaning = f"{meaning} (No space left on device)"
            return Diagnosis(meaning, SHM_FIX)
    return None


# --------------------------------------------------------------------------- nccl-tests output

@dataclass(frozen=True)
class PerfRow:
    """One size of an nccl-tests table (``*_perf`` stdout): out-of-place and in-place figures."""

    size_bytes: int
    count: int
    dtype: str
    redop: str
    root: int
    time_us: float
    algbw_gbs: float
    busbw_gbs: float
    wrong: float | None
    inplace_time_us: float
    inplace_algbw_gbs: float
    inplace_busbw_gbs: float
    inplace_wrong: float | None


@dataclass
class PerfTable:
    rows: list[PerfRow]
    ranks: int | None  # from the "# Using devices" block
    version: str | None  # "# nccl-tests version 2.19.6 ..." (absent before 2.17)
    avg_busbw_gbs: float | None
    out_of_bounds: int | None

    def at(self, size_bytes: int) -> PerfRow | None:
        """The last row of that size (a run with ``-N`` cycles repeats sizes)."""
        matches = [row for row in self.rows if row.size_bytes == size_bytes]
        return matches[-1] if matches else None


def _wrong(text: str) -> float | None:
    return None if text == "N/A" else float(text)


def parse_perf_table(text: str) -> PerfTable:
    """Parse an nccl-tests ``*_perf`` stdout (NCCL INFO lines and ``N:`` launcher prefixes tolerated).

    A data line is ``size count type redop root`` then ``time algbw busbw #wrong`` out of place and
    the same in place (``#wrong`` is ``N/A`` without ``-c``). Raises ValueError when no data line is found.
    """
    rows, ranks, version, avg, oob = [], 0, None, None, None
    for raw in text.splitlines():
        line = re.sub(r"^\s*\d+:\s", "", raw).strip()  # srun/mpirun --tag-output "0: " prefixes
        if line.startswith("#"):
            if re.match(r"#\s+Rank\s+\d+", line):
                ranks += 1
            match = re.search(r"nccl-tests version (\S+)", line)
            version = match[1] if match else version
            match = re.search(r"Avg bus bandwidth\s*:\s*([0-9.eE+-]+)", line)
            avg = float(match[1]) if match else avg
            match = re.search(r"Out of bounds values\s*:\s*(\d+)", line)
            oob = int(match[1]) if match else oob
            continue
        fields = line.split()
        if len(fields) < 13 or not (fields[0].isdigit() and fields[1].isdigit()):
            continue
        try:
            rows.append(PerfRow(
                int(fields[0]), int(fields[1]), fields[2], fields[3], int(fields[4]),
                float(fields[5]), float(fields[6]), float(fields[7]), _wrong(fields[8]),
                float(fields[9]), float(fields[10]), float(fields[11]), _wrong(fields[12])))
        except ValueError:
            continue
    if not rows:
        raise ValueError("no nccl-tests data line (size count type redop root time algbw busbw ...) found")
    return PerfTable(rows, ranks or None, version, avg, oob)


# --------------------------------------------------------------------------- nvidia-smi topo -m

def parse_topology(text: str) -> dict[str, dict[str, str]]:
    """``nvidia-smi topo -m`` -> ``{"GPU0": {"GPU1": "NV18", "NIC0": "PIX"}, ...}`` (GPU rows only).

    The header names the devices (GPUs, then NICs) before ``CPU Affinity``; each GPU row gives one
    link per device: ``X`` (self), ``NV#`` (# bonded NVLinks), ``PIX``, ``PXB``, ``PHB``, ``NODE``, ``SYS``.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    # the header names GPU0 as a column; GPU0's own row starts "GPU0 X"
    header = next((tokens for tokens in lines if "GPU0" in tokens and tokens[:2] != ["GPU0", "X"]), None)
    if header is None:
        return {}
    devices = []
    for token in header:
        if token in ("CPU", "NUMA"):
            break
        devices.append(token)
    matrix = {}
    for tokens in lines:
        if tokens and re.fullmatch(r"GPU\d+", tokens[0]) and len(tokens) > len(devices):
            matrix[tokens[0]] = dict(zip(devices, tokens[1:1 + len(devices)]))
    return matrix
