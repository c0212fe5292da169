"""benchlib.ceilings: exact product names, MIG slices scaled to their share, unknown products unknown."""
from __future__ import annotations

import pytest

from benchlib import ceilings


@pytest.mark.parametrize("name, product", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
    ("cuda:0 NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),  # a results.device label
    ("nvidia  h200", "NVIDIA H200"),
    ("NVIDIA GH200 480GB", "NVIDIA GH200 480GB"),
    ("NVIDIA GB200", "NVIDIA GB200"),
    ("NVIDIA B200", "NVIDIA B200"),
    ("NVIDIA GB10", "NVIDIA GB10"),
])
def test_products_are_found_by_their_exact_name(name: str, product: str) -> None:
    assert ceilings.spec_for(name).product == product


def test_look_alike_names_are_other_products() -> None:
    assert ceilings.peak_mem_bw_gbs("NVIDIA GH200 480GB") == 4000.0  # not the H200's 4800
    assert ceilings.peak_mem_bw_gbs("NVIDIA H200") == 4800.0
    assert ceilings.peak_tflops("NVIDIA GB200", "bf16") == 2500.0  # not the B200's 2250
    assert ceilings.peak_tflops("NVIDIA B200", "bf16") == 2250.0
    assert ceilings.peak_mem_bw_gbs("NVIDIA H100 PCIe") == 2000.0


@pytest.mark.parametrize("name", ["NVIDIA RTX 6000 Ada Generation", "NVIDIA H100", "H20", "Tesla V100-SXM2-16GB"])
def test_unknown_products_are_reported_as_unknown(name: str) -> None:
    found = ceilings.lookup(name)
    assert not found.known and ceilings.spec_for(name) is None and ceilings.peak_tflops(name, "bf16") is None
    assert found.reason.startswith(f"unknown product {name!r}")


def test_a_mig_slice_gets_its_share_not_the_whole_gpu() -> None:
    whole = ceilings.spec_for("NVIDIA H100 80GB HBM3")
    found = ceilings.lookup("NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    assert found.known
    assert found.spec.tflops["bf16"] == pytest.approx(whole.tflops["bf16"] / 7)
    assert found.spec.mem_bw_gbs == pytest.approx(whole.mem_bw_gbs / 8)  # 10 of 80 GB
    assert "1 of 7 compute slices" in found.spec.source and "10 of 80 GB" in found.spec.source
    exact = ceilings.spec_for("NVIDIA H100 80GB HBM3 MIG 3g.40gb", mig_sm_count=60)  # the fingerprint's SM count
    assert exact.tflops["bf16"] == pytest.approx(whole.tflops["bf16"] * 60 / 132)
    assert exact.mem_bw_gbs == pytest.approx(whole.mem_bw_gbs / 2) and "60 of 132 SMs" in exact.source
    assert ceilings.spec_for("cuda:0 NVIDIA A100-SXM4-40GB MIG 1g.5gb+me").mem_bw_gbs == pytest.approx(1555.0 / 8)
    assert not ceilings.lookup("NVIDIA Z100 MIG 1g.10gb").known


def test_gb10_has_nvidias_published_peaks_with_their_source_and_no_guessed_bf16() -> None:
    spark = ceilings.spec_for("NVIDIA GB10")
    assert spark.tflops == {"fp32": 31.0, "fp4": 500.0} and spark.mem_bw_gbs == 273.0
    assert "Hot Chips 2025" in spark.source and "DGX Spark datasheet" in spark.source
    assert ceilings.peak_tflops("NVIDIA GB10", "bf16") is None


def test_no_gpu_has_no_ceiling() -> None:
    assert not ceilings.lookup("cpu").known and ceilings.lookup("cpu").reason == "no GPU: no datasheet ceiling"
