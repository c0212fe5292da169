"""Fleet statistics: one suite run on many nodes (benchlib.cluster). Pure functions of DataFrames.

The results table (and telemetry) of a run on a cluster carry two more columns, ``node`` and
``gpu`` (the slot, :func:`with_slots` derives them from the shard's run id
``<run_id>@<node>-gpu<k>``). Three questions:

1. **Per node and GPU, the arm comparison with its interval** (:func:`slot_comparisons`):
   :func:`benchlib.stats.compare` on each slot's own invocations (hierarchical bootstrap, verdicts),
   one row per slot × case × metric × arm.

2. **How much of the variation is the node and how much the arm** (:func:`variance_components`).
   On y = log of each invocation's median (one benchmark × case × metric), the model
   ``y = μ + node + gpu(node) + arm + slot×arm + ε`` with node, GPU-within-node and the slot×arm
   interaction random and the arms fixed. Estimates by the method of moments on the table of cell
   means m[s, a] (slot s, arm a; slots lacking an arm are left out), unweighted means with n_h the
   harmonic mean of the cells' invocation counts:

   - σ²_ε: pooled within-cell variance (invocations of one arm on one slot);
   - MS_int = Σ (m − r_s − c_a + g)² / ((S−1)(A−1)), E = σ²_sa + σ²_ε/n_h, so
     σ²_sa = MS_int − σ²_ε/n_h;
   - MS_arm = S Σ (c_a − g)² / (A−1), E = S θ² + σ²_sa + σ²_ε/n_h: θ² = (MS_arm − MS_int)/S, and the
     arms' share of variance is their population variance (A−1)/A · θ²;
   - slot means r_s (average over arms) carry e = MS_int/A of noise (σ²_ε/n_h with one arm); nested in
     nodes with G_n slots each (G_h their harmonic mean): MS_within = Σ (r_s − r̄_n)²/(S−N), E =
     σ²_gpu + e; MS_between = Σ G_n (r̄_n − r̄)²/(N−1), E = G_h σ²_node + σ²_gpu + e.

   Negative estimates are set to 0. Shares are of their sum. Intervals for the node's and the arm's
   share: 95 % percentile interval over ``n_boot`` resamplings of nodes (with their slots and
   cells). One node: no node component (NaN); one GPU per node: the node and GPU cannot be told
   apart and the GPU component is NaN.

3. **Which nodes are slow whatever the arm** (:func:`slot_indicators`, :func:`outlier_slots`,
   :func:`slow_nodes`). Indicators per slot and arm, each from its invocations: the memory
   bandwidth of every ``membw`` case and the FLOP rate of every ``matmul`` case (work / invocation
   median time), the median SM clock of busy polls and the share of busy polls with a clock-event reason that holds
   the GPU back (throttling) of every case with telemetry. A slot's value is the
   median over its invocations, with se = 1.2533·sd/√k (the median's standard error under
   normality). The rule, per indicator and arm, against the fleet: on the log scale (rates, clocks)
   or as a share (throttling), the fleet median M and the robust spread s = 1.4826·MAD over slots;
   a slot's badness b = M − x (higher is better) or x − M; z = b / √(s² + se²), so a slot whose own
   invocations scatter widely (noisy but not slow) needs a larger deviation. A slot is an outlier in
   an arm when z ≥ ``threshold`` (3.5, Iglewicz and Hoaglin's modified z) and the deviation is
   practically large: at least ``min_deviation`` (5 %) of the fleet's value, or ``min_share``
   (0.10) more of the time throttled. An outlier in **every** arm measured is a slow slot whatever the
   arm; one in some arms only is reported apart (an arm-specific problem on that node, not a
   faulty node). Fewer than ``min_slots`` (5) slots: no rule.
"""
from __future__ import annotations

import re
from typing import Collection

import numpy as np
import pandas as pd

from . import stats
from .schema import STATUS_OK

FLEET_KEYS = ["node", "gpu"]
MEDIAN_SE = 1.2533  # sqrt(pi/2): se(median) = MEDIAN_SE * sd / sqrt(k) for normal data
MAD_SCALE = 1.4826
_SHARD_RUN_ID = re.compile(r"^(?P<run>.*)@(?P<node>[A-Za-z0-9][A-Za-z0-9._-]*)-gpu(?P<gpu>\d+)$")

VARIANCE_COLUMNS = [
    "benchmark", "case", "metric", "n_nodes", "n_slots", "n_arms", "n_invocations",
    "var_node", "var_gpu", "var_arm", "var_node_arm", "var_invocation",
    "share_node", "share_node_low", "share_node_high", "share_gpu", "share_arm", "share_arm_low", "share_arm_high",
    "share_node_arm", "share_invocation",
]
INDICATOR_COLUMNS = ["node", "gpu", "arm", "indicator", "benchmark", "case", "unit", "higher_is_better", "log_scale",
                     "value", "se", "n_invocations"]
OUTLIER_COLUMNS = ["node", "gpu", "indicator", "benchmark", "case", "unit", "arms", "arms_flagged", "value",
                   "fleet_median", "deviation", "z_min", "z_max", "verdict", "evidence"]
#: indicator -> (benchmark whose rate it is, unit scale, unit shown)
RATE_INDICATORS = {"bandwidth": ("membw", 1e9, "GB/s"), "matmul": ("matmul", 1e12, "TFLOP/s")}
EVERY_ARM, SOME_ARMS = "slow whatever the arm", "slow in some arms only"


# --------------------------------------------------------------------------- slots


def with_slots(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``node`` and ``gpu`` from its shard run ids (``<run_id>@<node>-gpu<k>``),
    unless it has them already. Raises ValueError naming a run id that is not a shard's."""
    if set(FLEET_KEYS) <= set(frame.columns):
        return frame
    ids = pd.Series(pd.unique(frame["run_id"].astype(str)))
    parts = ids.str.extract(_SHARD_RUN_ID)
    if parts["node"].isna().any():
        bad = ids[parts["node"].isna()].iloc[0]
        raise ValueError(f"run id {bad!r} is not a shard's (<run_id>@<node>-gpu<k>): load a run collected from a "
                         "cluster (benchlib collect)")
    lookup = pd.DataFrame({"run_id": ids, "node": parts["node"], "gpu": parts["gpu"].astype(np.int64)})
    return frame.merge(lookup, on="run_id", how="left", validate="many_to_one")


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    ok = results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)
    finite = np.isfinite(results["value"].to_numpy(dtype=float, na_value=np.nan))
    return results.loc[ok & finite]


_SEP = "\x1f"  # joins node, GPU and benchmark into one benchmark key for one stats.compare call


def slot_comparisons(results: pd.DataFrame, baseline: str | None = None, margin: float = 0.02,
                     n_boot: int = 2000, seed: int = 0,
                     higher_is_better: Collection[str] = frozenset()) -> pd.DataFrame:
    """Every arm against ``baseline`` (default: the first arm in row order) on each slot, with
    :func:`benchlib.stats.compare`'s statistics and verdicts; columns ``node, gpu`` + ``COMPARE_COLUMNS``.

    One call of ``compare`` does every slot: the slot goes into its benchmark key, so each slot's
    rows are compared only with its own baseline invocations, Holm's families are per slot
    (benchmark × metric × arm of that slot), and every row's random draws are seeded by its own key
    (a slot's numbers do not depend on the other slots). A slot without the baseline arm gets
    ``too_few`` rows.
    """
    results = with_slots(results)
    if results.empty:
        return pd.DataFrame(columns=FLEET_KEYS + stats.COMPARE_COLUMNS)
    baseline = baseline or str(results["arm"].iloc[0])
    keyed = results.assign(benchmark=results["node"].astype(str) + _SEP + results["gpu"].astype(str) + _SEP
                           + results["benchmark"].astype(str))
    table = stats.compare(keyed, baseline=baseline, margin=margin, n_boot=n_boot, seed=seed,
                          higher_is_better=higher_is_better)
    parts = table["benchmark"].str.split(_SEP, n=2, expand=True)
    table = table.assign(node=parts[0], gpu=parts[1].astype(np.int64), benchmark=parts[2])
    return table[FLEET_KEYS + stats.COMPARE_COLUMNS]


def invocation_medians(results: pd.DataFrame) -> pd.DataFrame:
    """One row per slot × arm × benchmark × case × metric × invocation: the median of its ok samples
    (``median``), its unit and the work one sample did (``work``)."""
    ok = _ok(with_slots(results))
    keys = [*FLEET_KEYS, "arm", "benchmark", "case", "metric", "run_id", "invocation"]
    grouped = ok.groupby(keys, sort=False, dropna=False)
    out = grouped["value"].median().rename("median").reset_index()
    extra = grouped.agg(unit=("unit", "first"), work=("work", "median"), work_unit=("work_unit", "first"))
    return out.merge(extra.reset_index(), on=keys, how="left")


# --------------------------------------------------------------------------- variance components


def _components(cells: np.ndarray, node_of_slot: np.ndarray, noise: float) -> dict[str, float]:
    """Method-of-moments components from the cell means ``cells`` (slots × arms), the node of each slot
    (codes 0..N-1) and σ²_ε/n_h (module docstring, point 2)."""
    slots, arms = cells.shape
    rows, cols, grand = cells.mean(axis=1), cells.mean(axis=0), cells.mean()
    out = {"var_arm": np.nan, "var_node_arm": np.nan, "var_gpu": np.nan, "var_node": np.nan}
    if arms >= 2 and slots >= 2:
        ms_int = ((cells - rows[:, None] - cols[None, :] + grand) ** 2).sum() / ((slots - 1) * (arms - 1))
        ms_arm = slots * ((cols - grand) ** 2).sum() / (arms - 1)
        out["var_node_arm"] = max(ms_int - noise, 0.0)
        out["var_arm"] = max((ms_arm - ms_int) / slots, 0.0) * (arms - 1) / arms
        row_noise = ms_int / arms
    else:
        row_noise = noise
    per_node = np.bincount(node_of_slot)
    nodes = per_node.size
    node_means = np.bincount(node_of_slot, rows) / per_node
    if slots > nodes:  # several GPUs on some node: the GPU within its node is its own component
        ms_within = ((rows - node_means[node_of_slot]) ** 2).sum() / (slots - nodes)
        out["var_gpu"] = max(ms_within - row_noise, 0.0)
        if nodes >= 2:
            harmonic = nodes / (1.0 / per_node).sum()
            ms_between = (per_node * (node_means - rows.mean()) ** 2).sum() / (nodes - 1)
            out["var_node"] = max((ms_between - ms_within) / harmonic, 0.0)
    elif nodes >= 2:
        out["var_node"] = max(rows.var(ddof=1) - row_noise, 0.0)
    return out


def _shares(parts: dict[str, float], residual: float) -> dict[str, float]:
    values = {**parts, "var_invocation": residual}
    total = sum(value for value in values.values() if np.isfinite(value))
    names = {"var_node": "share_node", "var_gpu": "share_gpu", "var_arm": "share_arm",
             "var_node_arm": "share_node_arm", "var_invocation": "share_invocation"}
    return {names[key]: (value / total if total > 0 and np.isfinite(value) else np.nan) for key, value in values.items()}


def _variance_one(group: pd.DataFrame, n_boot: int, rng: np.random.Generator) -> dict[str, float]:
    group = group[group["median"] > 0]
    y = np.log(group["median"].to_numpy(dtype=float))
    slot_codes, slot_index = pd.factorize(pd.MultiIndex.from_frame(group[FLEET_KEYS]))
    arm_codes, arm_index = pd.factorize(group["arm"])
    slots, arms = slot_index.size, arm_index.size
    cell = slot_codes * arms + arm_codes
    count = np.bincount(cell, minlength=slots * arms).reshape(slots, arms)
    total = np.bincount(cell, y, minlength=slots * arms).reshape(slots, arms)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        square = np.bincount(cell, (y - mean.ravel()[cell]) ** 2, minlength=slots * arms).reshape(slots, arms)
    complete = (count > 0).all(axis=1)
    mean, count, square = mean[complete], count[complete], square[complete]
    nodes_of = slot_index.get_level_values(0)[complete]
    node_codes, node_index = pd.factorize(nodes_of)
    row = {"n_nodes": node_index.size, "n_slots": int(complete.sum()), "n_arms": arms,
           "n_invocations": int(count.sum())}
    if row["n_slots"] == 0:
        return row

    def estimate(take: np.ndarray, codes: np.ndarray) -> dict[str, float]:
        c, sq = count[take], square[take]
        dof = (c - 1).clip(min=0).sum()
        residual = sq.sum() / dof if dof > 0 else np.nan
        harmonic = c.size / (1.0 / c).sum()
        noise = residual / harmonic if np.isfinite(residual) else 0.0
        parts = _components(mean[take], codes, noise)
        return {**parts, "var_invocation": residual, **_shares(parts, residual)}

    point = estimate(np.arange(mean.shape[0]), node_codes)
    row.update(point)
    row.update(share_node_low=np.nan, share_node_high=np.nan, share_arm_low=np.nan, share_arm_high=np.nan)
    slots_of_node = [np.flatnonzero(node_codes == k) for k in range(node_index.size)]
    if node_index.size >= 3 and n_boot > 0:
        draws = {"share_node": [], "share_arm": []}
        for _ in range(n_boot):
            picked = rng.integers(0, node_index.size, node_index.size)
            take = np.concatenate([slots_of_node[k] for k in picked])
            codes = np.repeat(np.arange(picked.size), [slots_of_node[k].size for k in picked])
            replicate = estimate(take, codes)
            for key in draws:
                draws[key].append(replicate[key])
        for key, values in draws.items():
            values = np.asarray(values, dtype=float)
            if np.isfinite(values).all():
                row[f"{key}_low"], row[f"{key}_high"] = stats._percentile_ci(values)
    return row


def variance_components(results: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """How much of the variation of log invocation medians is the node, the GPU within its node, the
    arm, their interaction and the invocation (module docstring, point 2); one row per benchmark ×
    case × metric, columns ``VARIANCE_COLUMNS``."""
    medians = invocation_medians(results)
    rows = []
    for number, ((benchmark, case, metric), group) in enumerate(
            medians.groupby(["benchmark", "case", "metric"], sort=False)):
        rng = np.random.default_rng([seed, number])
        rows.append({"benchmark": benchmark, "case": case, "metric": metric, **_variance_one(group, n_boot, rng)})
    return pd.DataFrame(rows).reindex(columns=VARIANCE_COLUMNS)


# --------------------------------------------------------------------------- indicators and outliers


def _rate_invocations(medians: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for indicator, (benchmark, scale, unit) in RATE_INDICATORS.items():
        timed = medians[(medians["benchmark"] == benchmark) & (medians["metric"] == "time")
                        & medians["work"].notna() & (medians["median"] > 0)]
        if timed.empty:
            continue
        frames.append(timed.assign(indicator=indicator, unit=unit, higher_is_better=True, log_scale=True,
                                   value=timed["work"] / timed["median"] / scale))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _telemetry_invocations(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Per invocation: the median SM clock of busy polls (not ``gpu_idle``) and the share of busy
    polls with a clock-event reason that holds the GPU back (stats' definition of such a reason)."""
    keys = [*FLEET_KEYS, "arm", "benchmark", "case", "run_id", "invocation"]
    telemetry = with_slots(telemetry)
    reasons = telemetry["clock_event_reasons"].fillna("").astype(str)
    unique = reasons.unique()
    idle = reasons.map({value: "gpu_idle" in value.split("|") for value in unique}).to_numpy(dtype=bool)
    held = reasons.map({value: stats._throttle_reason(value) for value in unique}).to_numpy(dtype=bool)
    busy = telemetry.assign(_held=held)[~idle]
    grouped = busy.groupby(keys, sort=False)
    clocks = grouped["sm_clock_mhz"].median().rename("value").reset_index()
    clocks = clocks.assign(indicator="sm_clock", unit="MHz", higher_is_better=True, log_scale=True)
    shares = grouped["_held"].mean().rename("value").reset_index()
    shares = shares.assign(indicator="throttle_share", unit="share of polls", higher_is_better=False,
                           log_scale=False)
    return pd.concat([clocks, shares], ignore_index=True)


def slot_indicators(results: pd.DataFrame, telemetry: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per slot × arm × indicator × case (module docstring, point 3): ``value`` (median over the slot's
    invocations), ``se`` (on the rule's scale: log for rates and clocks) and ``n_invocations``."""
    parts = [_rate_invocations(invocation_medians(results))]
    if telemetry is not None and not telemetry.empty:
        parts.append(_telemetry_invocations(telemetry))
    parts = [part for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame(columns=INDICATOR_COLUMNS)
    invocations = pd.concat(parts, ignore_index=True)
    invocations = invocations[np.isfinite(invocations["value"]) & ((invocations["value"] > 0) | ~invocations["log_scale"])]
    scaled = np.where(invocations["log_scale"], np.log(invocations["value"].where(invocations["value"] > 0, np.nan)),
                      invocations["value"])
    invocations = invocations.assign(_scaled=scaled)
    keys = [*FLEET_KEYS, "arm", "indicator", "benchmark", "case", "unit", "higher_is_better", "log_scale"]
    grouped = invocations.groupby(keys, sort=False)
    out = grouped.agg(value=("value", "median"), sd=("_scaled", "std"), n_invocations=("value", "size")).reset_index()
    out["se"] = (MEDIAN_SE * out["sd"] / np.sqrt(out["n_invocations"])).fillna(0.0)
    return out[INDICATOR_COLUMNS]


def _shown(value: float, unit: str) -> str:
    if unit == "share of polls":
        return f"throttled {100 * value:.0f} % of the time"
    return f"{value:,.3g} {unit}" if abs(value) < 100 else f"{value:,.0f} {unit}"


def _judge_arms(indicators: pd.DataFrame, threshold: float, min_deviation: float, min_share: float,
                min_slots: int) -> pd.DataFrame:
    """z, deviation, fleet median and the outlier flag of every slot, per indicator × case × arm."""
    frame = indicators.reset_index(drop=True)
    log_scale = frame["log_scale"].to_numpy(dtype=bool)
    higher = frame["higher_is_better"].to_numpy(dtype=bool)
    value = frame["value"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(log_scale, np.log(value), value)
    groups = frame.groupby(["indicator", "benchmark", "case", "arm"], sort=False).ngroup().to_numpy()
    x_series = pd.Series(x)
    centre = x_series.groupby(groups).transform("median").to_numpy()
    spread = MAD_SCALE * (x_series - centre).abs().groupby(groups).transform("median").to_numpy()
    size = x_series.groupby(groups).transform("size").to_numpy()
    bad = np.where(higher, centre - x, x - centre)
    scale = np.sqrt(spread ** 2 + frame["se"].to_numpy(dtype=float) ** 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = np.where(scale > 0, bad / scale, np.where(bad > 0, np.inf, 0.0))
        deviation = np.where(log_scale, np.where(higher, -np.expm1(-bad), np.expm1(bad)), bad)
    large = np.where(log_scale, deviation >= min_deviation, deviation >= min_share)
    evaluated = size >= min_slots
    return frame.assign(z=np.where(evaluated, z, np.nan), deviation=deviation,
                        fleet_median=np.where(log_scale, np.exp(centre), centre),
                        outlier=(z >= threshold) & large & evaluated, evaluated=evaluated)


def outlier_slots(indicators: pd.DataFrame, threshold: float = 3.5, min_deviation: float = 0.05,
                  min_share: float = 0.10, min_slots: int = 5) -> pd.DataFrame:
    """Every slot × indicator × case judged against the fleet in each arm (module docstring, point 3).

    Columns ``OUTLIER_COLUMNS``: the ``arms`` evaluated and ``arms_flagged``; ``verdict``
    (:data:`EVERY_ARM`, :data:`SOME_ARMS`, or ""); ``value``, ``fleet_median`` and ``deviation``
    (worse by that fraction of the fleet's value, or by that share of the time throttled) of the
    arm the verdict rests on: the least deviating arm when slow in every arm (or not flagged), the
    most deviating flagged arm when slow in some arms only; ``z_min``/``z_max`` over arms; and the
    ``evidence`` sentence for flagged rows.
    """
    if indicators.empty:
        return pd.DataFrame(columns=OUTLIER_COLUMNS)
    judged = _judge_arms(indicators, threshold, min_deviation, min_share, min_slots)
    judged = judged[judged["evaluated"]]
    if judged.empty:
        return pd.DataFrame(columns=OUTLIER_COLUMNS)
    keys = [*FLEET_KEYS, "indicator", "benchmark", "case", "unit"]
    grouped = judged.groupby(keys, sort=True)
    summary = grouped.agg(n_arms=("arm", "size"), n_flagged=("outlier", "sum"), z_min=("z", "min"),
                          z_max=("z", "max")).reset_index()
    summary["verdict"] = np.where(summary["n_flagged"] == summary["n_arms"], EVERY_ARM,
                                  np.where(summary["n_flagged"] > 0, SOME_ARMS, ""))
    # the arm each row rests on: flagged arms first when only some are, then the least (or most) deviating
    judged = judged.merge(summary[keys + ["verdict"]], on=keys)
    some = judged["verdict"].eq(SOME_ARMS).to_numpy()
    rank = np.where(some, np.where(judged["outlier"], -judged["deviation"], np.inf), judged["deviation"])
    chosen = judged.assign(_rank=rank).sort_values("_rank", kind="stable").drop_duplicates(keys)
    out = summary.merge(chosen[keys + ["value", "fleet_median", "deviation"]], on=keys)
    arms = judged.groupby(keys, sort=True)["arm"].agg(",".join).rename("arms")
    flagged = judged[judged["outlier"]].groupby(keys, sort=True)["arm"].agg(",".join).rename("arms_flagged")
    out = out.merge(arms.reset_index(), on=keys).merge(flagged.reset_index(), on=keys, how="left")
    out["arms_flagged"] = out["arms_flagged"].fillna("")
    out["evidence"] = ""
    marked = out.index[out["verdict"] != ""]
    if len(marked):
        by_key = {key: group for key, group in judged.groupby(keys, sort=False)}
        out.loc[marked, "evidence"] = [_evidence(row, by_key[tuple(row[k] for k in keys)])
                                       for _, row in out.loc[marked].iterrows()]
    return out[OUTLIER_COLUMNS].reset_index(drop=True)


def _evidence(row: pd.Series, group: pd.DataFrame) -> str:
    name = {"bandwidth": "memory bandwidth", "matmul": "matmul rate", "sm_clock": "SM clock",
            "throttle_share": "throttling"}[row["indicator"]]
    if row["indicator"] == "throttle_share":
        how = f"{100 * row['deviation']:.0f} points more of the time throttled"
    else:
        how = f"{100 * row['deviation']:.0f} % lower"
    arms = "; ".join(f"{arm}: {_shown(value, row['unit'])}, z {z:.1f}"
                     for arm, value, z in zip(group["arm"], group["value"], group["z"]))
    scope = "in every arm" if row["verdict"] == EVERY_ARM else f"in {row['arms_flagged'].replace(',', ', ')} only"
    return (f"GPU {row['gpu']} of {row['node']}: {name} in {row['benchmark']} {row['case']} "
            f"{_shown(row['value'], row['unit'])} against the fleet's {_shown(row['fleet_median'], row['unit'])} "
            f"({how}) {scope} ({arms})")


def slow_nodes(outliers: pd.DataFrame) -> pd.DataFrame:
    """Nodes with a slot slow whatever the arm: node, its GPUs flagged, the indicators, the worst
    deviation and the evidence sentences (worst first)."""
    every = outliers[outliers["verdict"] == EVERY_ARM]
    rows = []
    for node, group in every.groupby("node", sort=True):
        group = group.sort_values("deviation", ascending=False)
        rows.append({"node": node, "gpus": sorted(set(group["gpu"].astype(int))),
                     "indicators": sorted(set(group["indicator"])), "worst_deviation": group["deviation"].iloc[0],
                     "evidence": list(group["evidence"])})
    columns = ["node", "gpus", "indicators", "worst_deviation", "evidence"]
    return pd.DataFrame(rows, columns=columns).sort_values("worst_deviation", ascending=False, ignore_index=True)


__all__ = ["EVERY_ARM", "FLEET_KEYS", "SOME_ARMS", "invocation_medians", "outlier_slots", "slot_comparisons",
           "slot_indicators", "slow_nodes", "variance_components", "with_slots"]
