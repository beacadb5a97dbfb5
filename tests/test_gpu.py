"""GPU facts: --gpu SPEC parsing, known names, and NVML's real behaviour without a driver."""

from __future__ import annotations

import pytest

from machine import nvidia_driver
from model_pull.errors import ExitCode, ModelPullError
from model_pull.gpu import GIB, Sm, parse_size, parse_spec, read_nvml


@pytest.mark.parametrize(
    ("spec", "sm", "gib"),
    [
        ("8.9:24GiB", "8.9", 24),
        ("sm_90:80GiB", "9.0", 80),
        ("120:32G", "12.0", 32),
        ("7.5:16", "7.5", 16),
        ("10.0:180GiB", "10.0", 180),
    ],
)
def test_sm_and_memory_spec(spec, sm, gib):
    g = parse_spec(spec)
    assert (str(g.sm), g.total_bytes, g.free_bytes, g.source) == (sm, gib * GIB, None, "spec")


@pytest.mark.parametrize(
    ("name", "sm"),
    [
        ("L4", "8.9"),
        ("H100", "9.0"),
        ("RTX 5090", "12.0"),
        ("rtx5090", "12.0"),
        ("A100", "8.0"),
        ("T4", "7.5"),
        ("RTX 4090", "8.9"),
        ("B200", "10.0"),
        ("H200", "9.0"),
        ("A10", "8.6"),
        ("RTX 3090", "8.6"),
        ("L40S", "8.9"),
        ("NVIDIA GeForce RTX 4090", "8.9"),
    ],
)
def test_known_names(name, sm):
    g = parse_spec(name)
    assert str(g.sm) == sm and g.total_bytes > 10 * GIB


def test_known_name_with_memory_override():
    assert parse_spec("A100:40GiB").total_bytes == 40 * GIB


def test_decimal_and_binary_units():
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("23034MiB") == 23034 * 1024**2


@pytest.mark.parametrize("spec", ["Z80", "8.9", "8.9:lots", "abc:24GiB"])
def test_bad_spec_is_a_usage_error_that_lists_the_names(spec):
    with pytest.raises(ModelPullError) as err:
        parse_spec(spec)
    assert err.value.code is ExitCode.USAGE
    assert "L4" in str(err.value)


def test_sm_parse_and_order():
    assert Sm.parse("sm_100") == Sm(10, 0) and Sm.parse("8.9") < Sm.parse("9.0") < Sm(12, 0)


@pytest.mark.skipif(nvidia_driver(), reason="this machine has an NVIDIA driver")
def test_without_driver_nvml_says_so_plainly():
    # The REAL pynvml: nvmlInit raises NVMLError_LibraryNotFound here (no libnvidia-ml.so.1).
    reading = read_nvml()
    assert reading.gpus == ()
    assert reading.problem == "no NVIDIA driver: libnvidia-ml.so.1 (NVML) was not found"


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_driver(), reason="needs an NVIDIA driver and GPU")
def test_reads_the_real_device():
    reading = read_nvml()
    assert reading.problem is None and reading.gpus
    g = reading.gpus[0]
    assert g.sm >= Sm(3, 0) and 0 < (g.free_bytes or 0) <= g.total_bytes
    assert g.driver and g.source == "nvml" and g.name
