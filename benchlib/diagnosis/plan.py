"""Which ablation arms to run for a run's gaps (docs/architecture.md, "Diagnosis", "The experiment").

A *gap* is a case where an arm differs from the baseline beyond the margin with a 95 % interval that
says so (slower or faster: a TF32 override that speeds fp32 up is diagnosed like a slowdown), or
where the arm fails while the baseline runs. For every arm with a gap, each mechanism that differs
from the baseline (:func:`benchlib.diagnosis.mechanisms.differences`) becomes one ablation arm: the
arm's launcher (:meth:`benchlib.arms.Launcher.vary`) applies the mechanism's first alignment it can
express, so the derived arm differs from the gap arm in that mechanism alone. A mechanism no launcher
can align (the GPU's own state, the root filesystem), or whose alignment the arm's engine cannot
express, is listed as not tried, with the reason. The software stack is split with the run's own
isolated and rootfs arms where it has them.

Mechanisms are tried in this order: those that can act on a gap's case (its sensitivity classes,
:mod:`benchlib.diagnosis.blame`), then those whose effect nobody knows, then the rest (a red herring
that an experiment rules out is worth a line too); ``max_ablations`` caps the count per arm, and what
the cap leaves out is listed as not tried.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping, Sequence

from ..arms import Arm, CannotVary, Mechanism, launcher_for
from .alignments import (AlignCpuQuota, AlignCpuset, AlignIpcHost, AlignShm, AlignUlimit, Alignment, ApplyEnv,
                         Combined, SeccompUnconfined, SetEnv, SetThreads, Side, StackSplit)
from .blame import blame, sensitivity_in
from .classes import NO_KNOWN_EFFECT, UNKNOWN
from .mechanisms import Difference, fingerprint_pairs

__all__ = ["DEFAULT_MAX_ABLATIONS", "AblationPlan", "Gap", "NotTried", "PlannedAblation", "find_gaps",
           "plan_ablations", "vary_settings"]

#: Ablation arms per arm with a gap: with the arm and the baseline, 4 ablations make 3x the arms of the
#: comparison (the issue's performance target: a diagnosis within 3x the comparison's wall time).
DEFAULT_MAX_ABLATIONS = 4

GapOutcome = Literal["slower", "faster", "fails"]


@dataclass(frozen=True)
class Gap:
    """One case where ``arm`` differs from the baseline: a performance metric beyond the margin
    (``ratio`` of the statistic, arm over baseline, with its 95 % interval), or a failure."""

    arm: str
    benchmark: str
    case: str
    outcome: GapOutcome
    metric: str | None = None  # the performance metric with the largest gap; None for a failure
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    why: str = ""  # for a failure: the arm's error


@dataclass(frozen=True)
class PlannedAblation:
    """One derived arm: ``arm`` (what runs), the gap arm it is derived for, the side it changes
    (``arm``: the gap arm towards the baseline; ``baseline``: the baseline towards the gap arm), the
    mechanism(s) it aligns and what a user would change to get the same."""

    arm: Arm
    gap_arm: str
    side: Side
    mechanisms: tuple[str, ...]
    title: str
    what: str
    fix: str


@dataclass(frozen=True)
class NotTried:
    """A differing mechanism no ablation arm tests, and why (one sentence a user can act on)."""

    gap_arm: str
    mechanism: str
    title: str
    why: str


@dataclass
class AblationPlan:
    """The experiment: the baseline, the arms with gaps, their gaps, the ablation arms and what was not tried."""

    baseline: Arm
    gap_arms: list[Arm]
    gaps: list[Gap]
    ablations: list[PlannedAblation] = field(default_factory=list)
    not_tried: list[NotTried] = field(default_factory=list)

    @property
    def arms(self) -> list[Arm]:
        """Every arm the experiment runs, the baseline first, each once."""
        chosen: dict[str, Arm] = {}
        for arm in [self.baseline, *self.gap_arms, *(ablation.arm for ablation in self.ablations)]:
            chosen.setdefault(arm.name, arm)
        return list(chosen.values())

    @property
    def cases(self) -> list[tuple[str, str]]:
        """(benchmark, case) of every gap, each once, in the order found."""
        return list(dict.fromkeys((gap.benchmark, gap.case) for gap in self.gaps))


# ------------------------------------------------------------------------------------- gaps


def find_gaps(analysis: Any, arms: Sequence[str] | None = None) -> list[Gap]:
    """The gaps of an :class:`benchlib.analysis.Analysis`: per arm (all but the baseline, or ``arms``)
    and case, its performance metric with the largest conclusive difference beyond the margin, and the
    cases it fails while the baseline runs."""
    import numpy as np

    chosen = [arm for arm in analysis.arms[1:] if arms is None or arm in arms]
    gaps: list[Gap] = []
    performance = analysis.performance
    for arm in chosen:
        for benchmark, cases in analysis.failures(arm).items():
            gaps += [Gap(arm, benchmark, case, "fails", why=why) for case, why in cases.items()]
        failed = {(gap.benchmark, gap.case) for gap in gaps if gap.arm == arm}
        rows = performance[(performance["arm"] == arm) & performance["verdict_code"].eq("overhead")]
        rows = rows.assign(size=np.abs(np.log(rows["ratio"].astype(float)))).sort_values("size", ascending=False)
        for row in rows.drop_duplicates(["benchmark", "case"]).itertuples(index=False):
            if (row.benchmark, row.case) in failed:
                continue
            outcome: GapOutcome = "slower" if float(row.overhead) > 0 else "faster"
            gaps.append(Gap(arm, str(row.benchmark), str(row.case), outcome, str(row.metric), float(row.ratio),
                            float(row.ci_low), float(row.ci_high)))
    return gaps


# ------------------------------------------------------------------------------------- alignments as vary calls


def _env_values(values: tuple[tuple[str, str | None], ...], owner: Arm, who: str) -> dict[str, str | None]:
    """Variables to set (None: drop) in ``owner``'s env; CannotVary for one to unset that ``owner``'s own
    env does not set (it comes from the image or the invoking shell, which no arm option removes)."""
    from ..redact import REDACTED

    secret = [name for name, value in values if value is not None and REDACTED in value]
    if secret:
        raise CannotVary(f"the value of {', '.join(secret)} is a secret the fingerprint does not keep, so no arm "
                         "can be given it; compare with an arm that sets it to tell whether it matters.")
    inherited = [name for name, value in values if value is None and name not in owner.env]
    if inherited:
        raise CannotVary(f"{', '.join(inherited)} {'is' if len(inherited) == 1 else 'are'} set in {who} by its "
                         "image or the shell that runs benchlib, not by the arm, and an arm option cannot unset a "
                         "variable; the reverse ablation (the value applied to the other side) tests it instead.")
    return dict(values)


def _ulimit(alignment: AlignUlimit, arm: Arm) -> list[tuple[Mechanism, Any]]:
    if alignment.resource != "memlock":
        raise CannotVary(f"no launcher varies the {alignment.resource} ulimit alone; set --ulimit "
                         f"{alignment.resource}={alignment.value} in the arm's flags to test it.")
    return [(Mechanism.MEMLOCK, -1 if alignment.soft == "unlimited" else int(alignment.soft))]


#: Alignment type -> (alignment, the arm it changes) -> the vary calls that express it.
_SETTINGS: dict[type, Callable[[Any, Arm], list[tuple[Mechanism, Any]]]] = {
    AlignShm: lambda a, arm: [(Mechanism.SHM_SIZE, a.size_bytes)],
    AlignIpcHost: lambda a, arm: [(Mechanism.IPC_HOST, True)],
    AlignCpuQuota: lambda a, arm: [(Mechanism.CPU_QUOTA, a.cores)],
    AlignCpuset: lambda a, arm: [(Mechanism.CPUSET, a.cpus)],
    SetThreads: lambda a, arm: [(Mechanism.ENV, {"OMP_NUM_THREADS": str(a.count)})],
    SeccompUnconfined: lambda a, arm: [(Mechanism.SECCOMP, "unconfined")],
    AlignUlimit: _ulimit,
    SetEnv: lambda a, arm: [(Mechanism.ENV, _env_values(a.values, arm, f"arm {arm.name}"))],
    ApplyEnv: lambda a, arm: [(Mechanism.ENV, _env_values(a.values, arm, f"the baseline {arm.name}"))],
    Combined: lambda a, arm: [call for part in a.parts for call in vary_settings(part, arm)],
}


def vary_settings(alignment: Alignment, arm: Arm) -> list[tuple[Mechanism, Any]]:
    """The :meth:`~benchlib.arms.Launcher.vary` calls that make ``arm`` aligned in one mechanism;
    CannotVary (one sentence) for an alignment no launcher option expresses."""
    settings = _SETTINGS.get(type(alignment))
    if settings is None:
        raise CannotVary(f"no launcher option gives {alignment.what}; compare with an arm that has it to measure it.")
    return settings(alignment, arm)


def _derive(base: Arm, alignment: Alignment, name: str) -> Arm:
    """``base`` with ``alignment`` applied through its launcher, named ``name``; CannotVary when it cannot."""
    launcher = launcher_for(base)
    derived = base
    for mechanism, value in vary_settings(alignment, base):
        derived = launcher.vary(derived, mechanism, value)
    if replace(derived, name=base.name) == base:
        raise CannotVary(f"arm {base.name!r} already runs with {alignment.what}, so aligning it changes nothing.")
    return replace(derived, name=name)


def _arm_name(gap_arm: str, mechanism: str, side: Side, baseline: str, taken: set[str]) -> str:
    """``<gap arm>~<mechanism>`` (or ``<baseline>~<mechanism>`` for the baseline's side), folder-safe,
    at most 64 characters, unique."""
    owner = gap_arm if side == "arm" else f"{baseline}~{gap_arm}"
    name, attempt = f"{owner}~{re.sub(r'[^A-Za-z0-9_.+-]+', '-', mechanism).strip('-')}", 0
    readable = name
    while len(name) > 64 or name in taken:
        digest = hashlib.sha1(f"{owner}|{mechanism}|{side}|{attempt}".encode()).hexdigest()[:8]
        name, attempt = f"{readable[:55]}-{digest}", attempt + 1
    taken.add(name)
    return name


# ------------------------------------------------------------------------------------- the plan


def _order(differences: list[Difference], gaps: list[Gap], analysis: Any) -> list[Difference]:
    """In-class for some gap's case first, then unknown effect, then the rest (known effect elsewhere),
    then those known to leave speed alone; the mechanisms table's order within each."""
    sensitivities = [s for s in (sensitivity_in(analysis.results, gap.benchmark, gap.case) for gap in gaps) if s]
    likely = {d.mechanism for sensitivity in sensitivities for d in blame(differences, sensitivity).likely}

    def rank(difference: Difference) -> int:
        if difference.mechanism in likely:
            return 0
        if UNKNOWN in difference.classes:
            return 1
        return 3 if NO_KNOWN_EFFECT in difference.classes else 2

    return sorted(differences, key=rank)  # stable: the table's order within a rank


def _stack_arms(analysis: Any, run_arms: Mapping[str, Arm], gap_arm: Arm) -> dict[str, Arm]:
    """The run's own arms that split a container arm's stack from its isolation (their decomposition
    roles, docs/architecture.md, "Arms"): ``isolated`` and ``rootfs`` -> the arm of that role."""
    from ..analysis import decomposition_roles, role_of

    specs = {str(spec.get("name")): spec for spec in analysis.manifest.arms}
    if gap_arm.name not in specs or role_of(specs[gap_arm.name]) != "container":
        return {}
    roles = decomposition_roles(analysis.manifest.arms, str(analysis.baseline))
    return {variant: run_arms[roles[variant]] for variant in ("isolated", "rootfs")
            if roles.get(variant) in run_arms}


def plan_ablations(analysis: Any, run_arms: Sequence[Arm], arms: Sequence[str] | None = None,
                   max_ablations: int = DEFAULT_MAX_ABLATIONS, both_sides: bool = False) -> AblationPlan:
    """The experiment for ``analysis``'s gaps (:func:`find_gaps`). ``run_arms`` are the run's arms as
    they ran (secrets restored); ``arms`` limits which gap arms are diagnosed; ``both_sides`` also runs
    the reverse of each environment ablation (the arm's values applied to the baseline), which is
    otherwise run only where the arm's side cannot be changed."""
    by_name = {arm.name: arm for arm in run_arms}
    baseline = by_name[str(analysis.baseline)]
    gaps = find_gaps(analysis, arms)
    gap_arms = [by_name[name] for name in dict.fromkeys(gap.arm for gap in gaps)]
    plan = AblationPlan(baseline, gap_arms, gaps)
    taken = set(by_name)
    for gap_arm in gap_arms:
        found = fingerprint_pairs(analysis.envs, baseline.name, [gap_arm.name]).get(gap_arm.name, [])
        ordered = _order(found, [gap for gap in gaps if gap.arm == gap_arm.name], analysis)
        stack = _stack_arms(analysis, by_name, gap_arm)
        count = 0
        for difference in ordered:
            tries, reasons = _tries(difference, gap_arm, baseline, stack, both_sides, taken)
            if not tries:
                if NO_KNOWN_EFFECT in difference.classes and not difference.alignments:
                    continue  # known to leave speed alone, and nothing could align it anyway
                why = "; ".join(reasons) or difference.note or "no arm option aligns it"
                plan.not_tried.append(NotTried(gap_arm.name, difference.mechanism, difference.title, why))
                continue
            if count >= max_ablations:
                plan.not_tried.append(NotTried(
                    gap_arm.name, difference.mechanism, difference.title,
                    f"over --max-ablations {max_ablations} (mechanisms that can act on the case were tried first); "
                    "raise it to try this one"))
                continue
            count += 1
            plan.ablations += tries
    return plan


def _tries(difference: Difference, gap_arm: Arm, baseline: Arm, stack: Mapping[str, Arm], both_sides: bool,
           taken: set[str]) -> tuple[list[PlannedAblation], list[str]]:
    """The ablation arms that test ``difference`` (the arm's side first; the baseline's when that cannot
    run or ``both_sides``), and why the others cannot; ``stack``: the run's arms that split the stack."""
    made: list[PlannedAblation] = []
    reasons: list[str] = []
    for alignment in difference.alignments:
        if made and not (both_sides and alignment.side == "baseline" and all(m.side == "arm" for m in made)):
            break
        if isinstance(alignment, StackSplit):
            existing = stack.get(alignment.variant)
            if existing is not None:
                made.append(PlannedAblation(existing, gap_arm.name, alignment.side, (difference.mechanism,),
                                            difference.title, alignment.what, alignment.fix))
            elif alignment.variant != "native_image_env":
                reasons.append(f"{alignment.what} needs a{'n' if alignment.variant == 'isolated' else ''} "
                               f"{alignment.variant} arm in the run (benchlib run --arms "
                               f"{baseline.name},{gap_arm.name},{alignment.variant})")
            continue
        owner = gap_arm if alignment.side == "arm" else baseline
        name = _arm_name(gap_arm.name, difference.mechanism, alignment.side, baseline.name, taken)
        try:
            derived = _derive(owner, alignment, name)
        except CannotVary as exc:
            taken.discard(name)
            reasons.append(str(exc).removeprefix(f"arm {owner.name!r}: "))
            continue
        made.append(PlannedAblation(derived, gap_arm.name, alignment.side, (difference.mechanism,), difference.title,
                                    alignment.what, alignment.fix))
    return made, reasons
