"""The report's tables as people read them (issue 17): comparisons grouped by outcome in compare_to
style lines with the case parameters as columns, human units, p-values, one environment table with a
system header and no namespace inode numbers, throttle reasons, the command that made a run, the
navigation line and the index page. Fast: planted frames, no benchmark runs (the built reports are
checked in test_report.py)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from benchlib import comparisons, envtable
from benchlib.comparisons import case_params, comparison_lines, grouped, table_of
from benchlib.render import ARM_KINDS, _index_html, _with_navigation
from benchlib.throttling import throttle_reasons
from benchlib.units import env_value, human_bytes, namespace_text
from benchlib.wording import p_text

MARGIN = 0.02


# --------------------------------------------------------------------------- units and p-values


@pytest.mark.parametrize("count, text", [(67108864, "64 MiB"), (137438953472, "128 GiB"), (1536, "1.5 KiB"),
                                         (512, "512 B"), (85520809984, "79.6 GiB"), ("max", "max")])
def test_byte_counts_read_in_binary_units(count, text):
    assert human_bytes(count) == text


def test_fingerprint_values_are_shown_by_their_key():
    assert env_value("shm.size_bytes", "67108864") == "64 MiB"
    assert env_value("cgroup.memory_max", "max") == "max"  # no limit stays as it is
    assert env_value("cgroup.memory_max", "8589934592") == "8 GiB"
    assert env_value("torch.num_threads", "16") == "16"  # not a byte count
    assert env_value("shm.size_bytes", "(absent)") == "(absent)"


@pytest.mark.parametrize("p, text", [(0.0, "< 1e-4"), (3e-9, "< 1e-4"), (1.2e-4, "0.00012"), (0.0321, "0.032"),
                                     (0.5, "0.5"), (np.nan, "—"), (None, "—")])
def test_p_values_read_as_in_a_paper(p, text):
    assert p_text(p) == text


# --------------------------------------------------------------------------- comparison lines

BF16, FP32 = "n=8192,dtype=bf16", "n=8192,dtype=fp32"


def _comparison(**rows: dict) -> pd.DataFrame:
    """Planted stats.compare rows (only the columns the lines read), keyed by a label."""
    base = {"benchmark": "matmul", "metric": "time", "unit": "s", "arm": "isolated", "baseline": "native",
            "n_inv_arm": 3, "n_inv_base": 3, "p_welch_holm": 0.004, "p_tost_holm": 0.9, "band": None}
    return pd.DataFrame([{**base, **row} for row in rows.values()])


def _results(medians: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    """One sample per invocation, so each invocation's median is the value planted."""
    rows = [{"arm": arm, "benchmark": benchmark, "case": case, "metric": "time", "invocation": k + 1,
             "value": value, "status": "ok"}
            for (arm, benchmark, case), values in medians.items() for k, value in enumerate(values)]
    return pd.DataFrame(rows)


def _planted() -> tuple[pd.DataFrame, pd.DataFrame]:
    comparison = _comparison(
        slower={"case": BF16, "median_base": 1.23e-3, "median_arm": 1.26e-3, "ratio": 1.021, "ci_low": 1.004,
                "ci_high": 1.022, "overhead": 0.021, "verdict_code": "overhead",
                "verdict": "overhead 2.1 % [0.4 %, 2.2 %]"},
        same={"case": FP32, "median_base": 21.3e-3, "median_arm": 21.3e-3, "ratio": 1.0, "ci_low": 0.999,
              "ci_high": 1.006, "overhead": 0.0, "verdict_code": "equivalent", "verdict": "no overhead beyond 2 %",
              "p_tost_holm": 1e-9},
        faster={"case": "n=1024,dtype=fp32", "median_base": 2e-3, "median_arm": 1e-3, "ratio": 0.5, "ci_low": 0.45,
                "ci_high": 0.55, "overhead": -0.5, "verdict_code": "overhead", "verdict": "faster by 50.0 %"},
        open={"case": "n=64,dtype=fp32", "median_base": 1e-5, "median_arm": 1.1e-5, "ratio": 1.1, "ci_low": 0.9,
              "ci_high": 1.3, "overhead": 0.1, "verdict_code": "inconclusive", "p_welch_holm": 0.33,
              "verdict": "inconclusive: about 39 more invocations needed in each arm if the ratio is what was "
                         "measured; between 1 and 900 over the ratios the interval allows"},
    )
    results = _results({("native", "matmul", BF16): [1.22e-3, 1.23e-3, 1.24e-3],
                        ("isolated", "matmul", BF16): [1.25e-3, 1.26e-3, 1.27e-3]})
    return comparison, results


def test_each_comparison_is_one_compare_to_line_with_the_spread_and_the_interval():
    comparison, results = _planted()
    lines = comparison_lines(comparison, results, MARGIN)
    slower = lines.loc[lines["outcome"] == "slower", "line"].item()
    assert slower == ("matmul n=8192 dtype=bf16 time (isolated vs native): 1.23 ms ± 0.01 ms → "
                      "1.26 ms ± 0.01 ms: 1.021x slower [1.004, 1.022]")
    same = lines.loc[lines["outcome"] == "same"].iloc[0]
    assert same["change"] == "1.000x [0.999, 1.006]: the same within ±2 %"
    assert same["base_value"] == "21.3 ms" and same["p"] == "< 1e-4 (TOST)"  # one invocation's worth: no spread
    faster = lines.loc[lines["outcome"] == "faster", "change"].item()
    assert faster == "2.000x faster [1.818, 2.222]"
    still_open = lines.loc[lines["outcome"] == "open", "change"].item()
    assert still_open == "1.100x slower? [0.900, 1.300]: not decided (about 39 more invocations needed in each arm)"


def test_lines_come_grouped_by_outcome_failed_last():
    comparison, results = _planted()
    lines = comparison_lines(comparison, results, MARGIN,
                             {"isolated": {"shm_dataloader": {"num_workers=4": "failed: ShmExhausted: no shm"}}})
    assert list(lines["outcome"]) == ["slower", "faster", "same", "open", "failed"]
    failed = lines.iloc[-1]
    assert failed["line"] == ("shm_dataloader num_workers=4 (isolated vs native): failed in isolated: "
                              "ShmExhausted: no shm")
    assert [(outcome, benchmark) for outcome, benchmark, _ in grouped(lines)] == [
        ("slower", "matmul"), ("faster", "matmul"), ("same", "matmul"), ("open", "matmul"), ("failed", "shm_dataloader")]


def test_a_rate_that_drops_reads_slower():
    """Higher is better for a rate: the arm's lower rate is a slowdown (overhead > 0, ratio < 1)."""
    comparison = _comparison(rate={"case": BF16, "metric": "throughput", "unit": "GB/s", "median_base": 500.0,
                                   "median_arm": 400.0, "ratio": 0.8, "ci_low": 0.78, "ci_high": 0.82,
                                   "overhead": 0.25, "verdict_code": "overhead", "verdict": "overhead 25.0 %"})
    line = comparison_lines(comparison, _results({}), MARGIN).iloc[0]
    assert line["outcome"] == "slower" and line["change"] == "1.250x slower [1.220, 1.282]"


def test_the_case_parameters_are_columns_of_their_own():
    comparison, results = _planted()
    lines = comparison_lines(comparison, results, MARGIN)
    table = table_of(lines[lines["outcome"] == "slower"])
    assert list(table.columns[:2]) == ["n", "dtype"] and table[["n", "dtype"]].values.tolist() == [["8192", "bf16"]]
    assert "case" not in table.columns and "metric" not in table.columns  # time only: no metric column
    assert table["native: median ± spread"].item() == "1.23 ms ± 0.01 ms"
    assert case_params("mode=a,b,c,size=1") == {"mode": "a,b,c", "size": "1"}  # a value with commas
    assert case_params("plain") == {"case": "plain"}


def test_a_throttled_comparison_shows_its_verdict_without_the_throttled_samples_and_why():
    comparison, results = _planted()
    comparison = comparison.assign(throttled_share_arm=[0.96, 0, 0, 0], throttled_share_base=[0.9, 0, 0, 0],
                                   verdict_unthrottled=["inconclusive: about 2 more", "", "", ""],
                                   throttle_reasons_arm=["software power cap 98 %", "", "", ""],
                                   throttle_reasons_base=["", "", "", ""])
    lines = comparison_lines(comparison, results, MARGIN)
    slower = lines[lines["outcome"] == "slower"].iloc[0]
    assert slower["unthrottled"] == "inconclusive: about 2 more (throttled by software power cap 98 %)"
    assert "without throttled samples" in table_of(lines[lines["outcome"] == "slower"]).columns


def test_markup_in_a_case_reaches_the_tables_as_text():
    comparison, results = _planted()
    comparison.loc[0, "case"] = "n=<script>alert(1)</script>"
    lines = comparison_lines(comparison, results, MARGIN)
    from benchlib.figures import html_table
    page = html_table(table_of(lines[lines["outcome"] == "slower"]))
    assert "<script>" not in page and "&lt;script&gt;" in page


# --------------------------------------------------------------------------- environment


def _env(shm: int, net: str, driver: str = "580.159.04", torch: str = "2.11.0+cu130") -> dict:
    return {"shm": {"size_bytes": shm}, "process": {"namespaces": {"net": net, "user": "user:[4026531837]"}},
            "versions": {"nvidia_driver": driver, "torch": torch, "cuda_driver": "13.0", "torch_cuda_runtime": "13.0"},
            "python": {"version": "3.12.3"}, "cpu": {"model": "Planted CPU <b>9000</b>"},
            "gpus": [{"name": "NVIDIA H100 80GB HBM3"}], "host": {"os": "Ubuntu", "kernel": "6.1"}}


ENVS = {("native", "m", "c", 1): _env(137438953472, "net:[4026531840]"),
        ("isolated", "m", "c", 1): _env(67108864, "net:[4026532265]"),
        ("rootfs", "m", "c", 1): _env(137438953472, "net:[4026531840]", torch="2.10.0a0+nv25.10")}
KINDS = {"native": "native", "isolated": "isolated", "rootfs": "rootfs"}
SPECS = [{"name": "native", "kind": "native", "engine": "host"},
         {"name": "isolated", "kind": "isolated", "engine": "runc", "preflight": {"engine_version": "1.1.5+ds1"}},
         {"name": "rootfs", "kind": "rootfs", "engine": "chroot", "image": "nvcr.io/nvidia/pytorch:25.10-py3"}]


def _env_frame() -> pd.DataFrame:
    from benchlib.envdiff import env_diff
    arms = ["native", "isolated", "rootfs"]
    return envtable.env_frame(env_diff(ENVS, arms), arms, "native", KINDS)


def test_one_environment_table_with_the_effect_each_difference_belongs_to():
    frame = _env_frame().set_index("key")
    assert frame.loc["shm.size_bytes", ["native", "isolated", "rootfs"]].tolist() == ["128 GiB", "64 MiB", "128 GiB"]
    assert frame.loc["shm.size_bytes", "effect"] == "isolation"
    assert frame.loc["versions.torch", "effect"] == "stack"
    assert frame.loc["shm.size_bytes", "why it matters"].startswith("64 MiB /dev/shm")


def test_namespaces_are_whose_namespace_not_an_inode_number():
    frame = _env_frame()
    text = frame.to_string()
    assert "4026" not in text and "[" not in "".join(frame.loc[frame["key"].str.startswith("process."), "native"])
    net = frame.set_index("key").loc["process.namespaces.net"]
    assert (net["native"], net["isolated"], net["rootfs"]) == (
        "host's network namespace", "own network namespace", "host's network namespace")
    assert namespace_text("process.namespaces.pid", "pid:[1]", "pid:[1]") == "host's PID namespace"


def test_the_system_header_gives_each_arm_its_gpu_driver_cuda_torch_engine_and_image():
    system = envtable.system_frame(ENVS, SPECS, ["native", "isolated", "rootfs"]).set_index("")
    assert system.loc["NVIDIA driver", "isolated"] == "580.159.04"
    assert system.loc["torch", "rootfs"] == "2.10.0a0+nv25.10" and system.loc["torch", "native"] == "2.11.0+cu130"
    assert system.loc["GPU", "native"] == "NVIDIA H100 80GB HBM3"
    assert system.loc["container engine", "isolated"] == "runc 1.1.5+ds1"
    assert system.loc["container engine", "native"] == "none (on the host)"
    assert system.loc["image", "rootfs"] == "nvcr.io/nvidia/pytorch:25.10-py3"
    assert system.loc["CPU", "native"] == "Planted CPU <b>9000</b>"  # escaped where shown (figures.html_table)


def test_an_arm_without_fingerprints_is_not_recorded_in_the_header():
    system = envtable.system_frame({}, SPECS[:1], ["native"]).set_index("")
    assert system.loc["torch", "native"] == "(not recorded)"


# --------------------------------------------------------------------------- throttling


def test_the_throttle_reason_is_named_with_its_share_of_the_throttled_polls():
    stamps = np.arange(100) * 1_000_000
    reasons = ["hw_slowdown"] * 60 + ["sw_thermal_slowdown|gpu_idle"] * 30 + [""] * 10
    telemetry = pd.DataFrame({"timestamp_ns": stamps, "gpu_index": 0, "sm_clock_mhz": 1980.0,
                              "clock_event_reasons": reasons, "arm": "a", "benchmark": "b", "case": "c"})
    (row,) = throttle_reasons(telemetry).to_dict("records")
    assert row["reasons"] == "hardware slowdown 67 %; software thermal slowdown 33 %"
    assert throttle_reasons(telemetry.iloc[0:0]).empty


# --------------------------------------------------------------------------- navigation and index


PAGE = """<html><body><div class="jp-Cell"><div class="x">
<h1 id="Container-vs-native">Container vs native<a class="anchor-link" href="#Container-vs-native">¶</a></h1>
</div>
</div><div class="benchlib-answer">the answer</div>
<h2 id="The-run">The run<a class="anchor-link" href="#The-run">¶</a></h2>
<h2 id="What-&amp;-why">What &amp; why<a class="anchor-link" href="#What-&amp;-why">¶</a></h2>
</body></html>"""


def test_the_navigation_links_every_section_and_the_index_and_comes_before_the_answer():
    page = _with_navigation(PAGE)
    nav = page[page.index("<nav"):page.index("</nav>")]
    targets = re.findall(r'href="#([^"]+)"', nav)
    ids = set(re.findall(r'<h2 id="([^"]+)"', page))
    assert targets == ["The-run", "What-&amp;-why"] and set(targets) <= ids
    assert 'href="../index.html"' in nav and "What &amp; why" in nav
    assert page.index("</h1>") < page.index("<nav") < page.index("benchlib-answer")


def test_the_index_explains_the_arms_and_links_the_readme_and_the_methodology():
    page = _index_html([{"run_id": "r<1>", "href": "reports/r.html", "arms": ["native", "isolated"]}])
    assert 'href="../README.md"' in page and 'href="methodology.md"' in page
    for name, _ in ARM_KINDS:
        assert f"<strong>{name}</strong>:" in page
    assert "r&lt;1&gt;" in page and "r<1>" not in page


def test_comparison_outcomes_have_titles():
    assert set(comparisons.OUTCOME_TITLES) == set(comparisons.OUTCOMES)


# --------------------------------------------------------------------------- the sample run, planted


SAMPLE = __import__("pathlib").Path(__file__).resolve().parent.parent / "outputs" / "sample"
ALL_THROTTLED = "n=8192,dtype=bf16"


@pytest.fixture(scope="module")
def planted_sample(tmp_path_factory: pytest.TempPathFactory):
    """The bundled sample run (H100, native vs isolated) with a recorded command in its manifest and
    every telemetry poll of its matmul bf16 case throttled by a hardware slowdown."""
    import json
    import shutil

    from benchlib.analysis import analyse
    from benchlib.manifest import Manifest

    run_dir = tmp_path_factory.mktemp("sample") / SAMPLE.name
    shutil.copytree(SAMPLE, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["benchlib"]["command"] = "benchlib run --suite quick --arms native,isolated --invocations 5"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    for inv in Manifest.load(run_dir).invocations:
        path = run_dir / inv.rel_dir / "telemetry.parquet"
        if inv.case == ALL_THROTTLED and path.is_file():
            frame = pd.read_parquet(path)
            frame["clock_event_reasons"] = "hw_slowdown"
            frame.to_parquet(path, index=False)
    return run_dir, analyse(run_dir)


def test_the_sample_first_screen_says_sizes_in_binary_units(planted_sample):
    _, analysis = planted_sample
    first = analysis.answer().text
    assert "shm.size_bytes: 128 GiB in native, 64 MiB in isolated" in first
    assert "137438953472" not in first and "67108864" not in first


def test_an_all_throttled_case_names_the_reason_and_both_verdicts_on_the_first_screen(planted_sample):
    _, analysis = planted_sample
    throttled = analysis.throttled_frame()
    row = throttled[throttled["case"] == f"matmul {ALL_THROTTLED}"].iloc[0]
    assert row["why throttled"] == "hardware slowdown 100 %" and row["throttled samples"].startswith("100 %")
    assert row["without the throttled samples"].startswith("too few invocations")  # nothing left to compare
    first = analysis.answer().text
    assert "Throttled GPU:" in first and "hardware slowdown 100 %" in first
    assert any("ran while the GPU was throttled (by hardware slowdown 100 %)" in p for p in analysis.problems)


def test_the_environment_table_lists_no_namespace_inode(planted_sample):
    _, analysis = planted_sample
    table = analysis.env_table().text
    assert "4026" not in table and "own network namespace" in table and "64 MiB" in table
    assert analysis.env_frame()["key"].is_unique
    assert not analysis.env_diff.empty and "67108864" in analysis.env_diff.to_string()  # summary.json: raw


def test_the_footer_shows_the_recorded_command_and_the_versions(planted_sample):
    run_dir, analysis = planted_sample
    footer = analysis.footer().text
    assert "<code>benchlib run --suite quick --arms native,isolated --invocations 5</code>" in footer
    assert "2.11.0+cu130 (every arm)" in footer and "580.159.04" in footer and "href='../index.html'" in footer


def test_a_run_without_a_recorded_command_gives_the_equivalent():
    from benchlib.analysis import analyse

    command, recorded = analyse(SAMPLE).command()
    assert not recorded and command == "benchlib run --suite quick --arms native,isolated --invocations 5"


def test_a_run_without_telemetry_says_so_at_the_top(planted_sample, tmp_path):
    import shutil

    from benchlib.analysis import analyse

    run_dir = tmp_path / SAMPLE.name
    shutil.copytree(planted_sample[0], run_dir)
    for path in run_dir.rglob("telemetry.parquet"):
        path.unlink()
    analysis = analyse(run_dir)
    first = analysis.answer().text
    assert "No GPU telemetry was recorded" in first
    assert first.index("No GPU telemetry") < first.index("<div class='benchlib-problems'>")  # before the problems
    assert analysis.throttled_frame().empty
