"""The collector measures the shapes the calibration tables hold, and writes their format.

Measuring needs a CUDA GPU and PyTorch; these tests cover what does not: the shape lists
(derived from the model catalog), the CSV writing and the command line.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pdplanner.planner.catalog import ModelSpec, load_model
from pdplanner.planner.perf import collect
from pdplanner.planner.perf.calibration import read_tables


@pytest.fixture(scope="module")
def default_models() -> list[ModelSpec]:
    return [load_model(m) for m in collect.DEFAULT_MODELS]


def test_projection_shapes_of_llama_8b_at_tp8() -> None:
    """QKV (4 + 2*1 heads of 128), O, gate+up and down of one GPU's shard."""
    shapes = collect.projection_shapes(load_model("llama-3.1-8b"), 8)
    assert shapes == [(768, 4096), (4096, 512), (3584, 4096), (4096, 1792)]


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    qkv = collect.projection_shapes(load_model("llama-3.1-70b"), 16)[0]
    assert qkv == ((4 + 2 * 1) * 128, 8192)


def test_gemm_shapes_are_those_of_the_h100_table(default_models: list[ModelSpec]) -> None:
    g = read_tables("h100-sxm").gemm
    measured = {(int(n), int(k)) for n, k in zip(g["N"], g["K"], strict=True)}
    assert set(collect.gemm_shapes(default_models)) == measured


def test_gemm_cases_match_the_h100_table_row_for_row(default_models: list[ModelSpec]) -> None:
    g = read_tables("h100-sxm").gemm
    cases = collect.gemm_cases(collect.gemm_shapes(default_models))
    got = [(2.0 if c.dtype == "bf16" else 1.0, c.m, c.n, c.k) for c in cases]
    want = list(zip(g["dtype_bytes"], g["M"], g["N"], g["K"], strict=True))
    assert got == want


def test_fp8_cases_only_where_scaled_mm_accepts_the_shape() -> None:
    cases = collect.gemm_cases([(1000, 4096), (1024, 4096)], tokens=(1, 16, 24))
    fp8 = [(c.m, c.n) for c in cases if c.dtype == "fp8"]
    assert fp8 == [(16, 1024)]
    assert not [c for c in collect.gemm_cases([(1024, 4096)], fp8=False) if c.dtype == "fp8"]


def test_attention_cases_cover_the_h100_tables(default_models: list[ModelSpec]) -> None:
    heads = collect.attention_heads(default_models)
    assert heads[0] == (64, 8, 128)
    t = read_tables("h100-sxm")
    prefill = set(collect.prefill_cases(heads))
    for row in zip(*(t.attn_prefill[c] for c in ("B", "S", "H", "Hkv", "D")), strict=True):
        assert tuple(int(x) for x in row) in prefill
    decode = set(collect.decode_cases(heads, mem_bytes=float(t.meta["mem_bytes"])))
    for row in zip(*(t.attn_decode[c] for c in ("B", "L", "H", "Hkv", "D")), strict=True):
        assert tuple(int(x) for x in row) in decode
    assert (256, 32768, 64, 8, 128) not in decode  # 34 GB of KV: more than a quarter of 80 GB


def test_written_tables_read_back(tmp_path: Path) -> None:
    collect.write_table(
        tmp_path / "gemm.csv",
        "gemm.csv",
        [("bf16", 1, 768, 4096, 0.011455999687314034, 0.5491843725316207)],
    )
    with (tmp_path / "gemm.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["dtype", "M", "N", "K", "ms", "tflops"],
        ["bf16", "1", "768", "4096", "0.011455999687314034", "0.5491843725316207"],
    ]


def test_a_full_set_of_written_tables_calibrates(tmp_path: Path) -> None:
    t = read_tables("h100-sxm")
    dtype = {2.0: "bf16", 1.0: "fp8"}
    g = t.gemm
    collect.write_table(
        tmp_path / "gemm.csv",
        "gemm.csv",
        [
            (dtype[float(b)], int(m), int(n), int(k), float(ms), 0.0)
            for b, m, n, k, ms in zip(
                g["dtype_bytes"], g["M"], g["N"], g["K"], g["ms"], strict=True
            )
        ],
    )
    for name, length, table in (
        ("attn_prefill.csv", "S", t.attn_prefill),
        ("attn_decode.csv", "L", t.attn_decode),
    ):
        cols = [table[c] for c in ("B", length, "H", "Hkv", "D")]
        collect.write_table(
            tmp_path / name,
            name,
            [
                (*(int(x) for x in row[:5]), float(row[5]))
                for row in zip(*cols, table["ms"], strict=True)
            ],
        )
    meta = [
        *t.meta.items(),
        ("bf16_peak_flops_per_s", 989e12),
        ("fp8_peak_flops_per_s", 1979e12),
        ("hbm_peak_bytes_per_s", 3.35e12),
    ]
    collect.write_table(tmp_path / "meta.csv", "meta.csv", meta)
    back = read_tables(str(tmp_path))
    np.testing.assert_array_equal(back.gemm["ms"], g["ms"])
    np.testing.assert_array_equal(back.attn_decode["ms"], t.attn_decode["ms"])


def test_help_works_without_pytorch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        collect.main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_without_pytorch_it_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert collect.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "PyTorch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
