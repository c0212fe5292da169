"""benchlib.fingerprint: every section present, JSON-clean, fast, and no secret survives."""
from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("torch")  # capture() imports it; import it here so the timing excludes that

from benchlib.fingerprint import arch_support, capture, redact, to_json  # noqa: E402

SECTIONS = {
    "captured_at", "host", "container", "arm", "process", "python", "versions", "torch", "gpus", "cpu",
    "cgroup", "memory", "shm", "security", "limits", "mounts", "env", "visible_devices", "nccl", "virtualization",
}
GPU_UUID = "GPU-3f2c1a4e-9b7d-4c61-8e2f-0a1b2c3d4e5f"
DIGEST = "sha256:" + "0123456789abcdef" * 4
SECRETS = {
    "CUDA_HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz123456",
    "NVIDIA_API_KEY": "nvapi-Zq9xW2vR7tY4uI1oP6aS3dF8gH5jK0lZ",
    "TORCH_X": "https://user:hunter2pass@example.com/x",
    "NCCL_SOMETHING": "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "OMP_OPAQUE": "Ab3dEf6hIj9kLm2oPq5sTu8wXy1zAb4dEf7h",  # a bare high-entropy blob
    "PYTORCH_AWS": "AKIAIOSFODNN7EXAMPLE",
}
LEAKED_PARTS = ["hunter2pass", "abcdefghijklmnopqrstuvwxyz123456", "A1b2C3d4E5f6", "Ab3dEf6hIj9k", "AKIAIOSFODNN7",
                "Zq9xW2vR7tY4"]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", GPU_UUID)
    monkeypatch.setenv("BENCHLIB_ARM", "container-nvidia")
    monkeypatch.setenv("BENCHLIB_ARM_KIND", "container")
    monkeypatch.setenv("BENCHLIB_ENGINE", "docker")
    monkeypatch.setenv("BENCHLIB_IMAGE", "benchlib:latest")
    monkeypatch.setenv("BENCHLIB_IMAGE_DIGEST", DIGEST)
    monkeypatch.setenv("BENCHLIB_RUN_FLAGS", json.dumps(["--ipc=host", "--ulimit", "memlock=-1", "-e", "HF_TOKEN=x1"]))


def test_capture_has_every_section_and_is_json() -> None:
    fp = capture()
    assert set(fp) == SECTIONS
    assert json.loads(json.dumps(fp)) == fp  # plain JSON types only, no default= needed
    assert isinstance(fp["container"]["detected"], bool)
    assert fp["python"]["version"] and fp["cpu"]["logical_cores"] >= 1
    assert fp["shm"]["size_bytes"] > 0 and fp["cgroup"]["version"] in (1, 2)
    assert fp["limits"]["memlock"]["soft"] is not None
    assert fp["security"]["seccomp_mode"] in ("disabled", "strict", "filter")
    assert fp["torch"]["float32_matmul_precision"] in ("highest", "high", "medium")


def test_memory_section_says_what_is_really_available() -> None:
    memory = capture()["memory"]
    assert memory["mem_available_bytes"] > 0 and memory["mem_total_bytes"] >= memory["mem_available_bytes"]
    assert 0 < memory["available_bytes"] <= memory["mem_available_bytes"] and memory["available_how"]
    assert memory["cuda_device_integrated"] is None or isinstance(memory["cuda_device_integrated"], bool)


def test_capture_is_fast() -> None:
    capture()
    start = time.perf_counter()
    capture()
    assert time.perf_counter() - start < 2.0


def test_no_secret_survives_and_ids_do(planted: None) -> None:
    text = to_json(capture())
    for value in SECRETS.values():
        assert value not in text
    for part in LEAKED_PARTS:
        assert part not in text
    assert GPU_UUID in text and DIGEST in text
    assert "https://<redacted>@example.com/x" in text
    assert "HF_TOKEN=<redacted>" in text  # secrets inside run flags too


def test_arm_env_lands_in_arm_section(planted: None) -> None:
    fp = capture()
    assert fp["arm"] == {
        "name": "container-nvidia", "kind": "container", "engine": "docker", "image": "benchlib:latest",
        "image_digest": DIGEST, "run_flags": ["--ipc=host", "--ulimit", "memlock=-1", "-e", "HF_TOKEN=<redacted>"],
    }
    assert fp["env"]["BENCHLIB_ARM"] == "container-nvidia"
    if fp["container"]["detected"]:
        assert fp["container"]["engine"] == "docker"


def test_redact_keys_and_values() -> None:
    out = redact({
        "HF_TOKEN": "anything", "nested": {"db_password": 3, "AuthHeader": ["x"]},
        "cuda_visible_devices": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "paths": ["/usr/local/cuda-13.0/targets/x86_64-linux/lib", "/opt/torch/.venv/bin/python3"],
        "ids": [GPU_UUID, "MIG-" + GPU_UUID[4:], DIGEST, "e6b335d17896dc53974a0b9fc15bd54c"],
        "flags": "--shm-size=16g --cpuset-cpus=0-15 password=hunter2",
    })
    assert out["HF_TOKEN"] == "<redacted>"
    assert out["nested"] == {"db_password": "<redacted>", "AuthHeader": "<redacted>"}
    assert out["cuda_visible_devices"] == "0,1" and out["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert out["paths"] == ["/usr/local/cuda-13.0/targets/x86_64-linux/lib", "/opt/torch/.venv/bin/python3"]
    assert out["ids"] == [GPU_UUID, "MIG-" + GPU_UUID[4:], DIGEST, "e6b335d17896dc53974a0b9fc15bd54c"]
    assert out["flags"] == "--shm-size=16g --cpuset-cpus=0-15 password=<redacted>"


@pytest.mark.parametrize(
    ("arch_list", "capability", "expected"),
    [
        (["sm_80", "sm_86", "sm_90", "sm_100"], (9, 0), (True, "sm_90")),
        (["sm_80", "sm_86"], (8, 9), (True, "sm_86")),  # same major, lower minor: binary compatible
        (["sm_80", "compute_80"], (9, 0), (True, "PTX JIT (compute_80)")),
        (["sm_90a"], (9, 0), (True, "sm_90a")),
        (["sm_90a", "compute_90a"], (10, 0), (False, None)),  # arch-specific code never carries over
        (["sm_100", "sm_120"], (9, 0), (False, None)),
        ([], (12, 1), (False, None)),
    ],
)
def test_arch_support(arch_list: list[str], capability: tuple[int, int], expected: tuple[bool, str | None]) -> None:
    assert arch_support(arch_list, capability) == expected
