"""The calibrated kernel model reproduces the measured H100 tables, and predicts shapes it was
not fitted on.

Errors are absolute percentage errors (APE) of the predicted time against every measured row;
each test prints the median, the 90th percentile and the worst rows it found (run with ``-s``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pdplanner.planner.catalog import load_model
from pdplanner.planner.errors import CalibrationError
from pdplanner.planner.perf import calibration as cb
from pdplanner.planner.perf import opkernels as ok
from pdplanner.planner.perf.collect import gemm_shapes

H100_BF16_FLOPS_PER_S = 989e12
H100_FP8_FLOPS_PER_S = 1979e12
H100_HBM_BYTES_PER_S = 3.35e12

# What the model reaches on every row of the H100 tables (see the printed figures); the bounds
# leave a margin for numerical differences between machines, not for a worse model.
MEDIAN_APE_MAX = 5.0
P90_APE_MAX = 15.0
# Fitted on two models' shapes, tested on a third's.
HELD_OUT_MEDIAN_APE_MAX = 7.5
HELD_OUT_P90_APE_MAX = 20.0


@pytest.fixture(scope="module")
def tables() -> cb.Tables:
    return cb.read_tables("h100-sxm")


@pytest.fixture(scope="module")
def cal() -> cb.Calibration:
    return cb.load_calibration("h100-sxm")


def report(
    label: str, predicted: np.ndarray, measured: np.ndarray, describe: Callable[[int], str]
) -> tuple[float, float]:
    """Print and return (median APE, p90 APE) in percent, with the five worst rows."""
    ape = 100.0 * np.abs(predicted / measured - 1.0)
    median, p90 = float(np.median(ape)), float(np.percentile(ape, 90))
    print(
        f"\n{label}: {ape.size} rows, median APE {median:.2f}%, p90 {p90:.2f}%, "
        f"max {ape.max():.1f}%, median predicted/measured {np.median(predicted / measured):.3f}"
    )
    for i in np.argsort(ape)[::-1][:5]:
        print(
            f"    {describe(int(i))}: measured {measured[i]:.4f} ms, "
            f"predicted {predicted[i]:.4f} ms ({100 * (predicted[i] / measured[i] - 1):+.1f}%)"
        )
    return median, p90


def gemm_predictions(
    g: dict[str, np.ndarray],
    sel: np.ndarray,
    dtype_bytes: float,
    params: np.ndarray,
    hbm_bytes_per_s: float = H100_HBM_BYTES_PER_S,
) -> np.ndarray:
    """The njit kernel's prediction for the selected rows with one dtype's parameter set, on a
    GPU with the H100's compute peaks and ``hbm_bytes_per_s``."""
    peak = H100_BF16_FLOPS_PER_S if dtype_bytes == 2.0 else H100_FP8_FLOPS_PER_S
    cal = np.concatenate((params, params))
    return np.array(
        [
            ok.gemm_ms(m, n, k, dtype_bytes, peak, hbm_bytes_per_s, cal)
            for m, n, k in zip(g["M"][sel], g["N"][sel], g["K"][sel], strict=True)
        ]
    )


def gemm_describer(g: dict[str, np.ndarray], sel: np.ndarray) -> Callable[[int], str]:
    idx = np.flatnonzero(sel)
    return lambda i: f"M={g['M'][idx[i]]:.0f} N={g['N'][idx[i]]:.0f} K={g['K'][idx[i]]:.0f}"


# ----------------------------------------------------------------------------- every row


@pytest.mark.parametrize("dtype,dtype_bytes", [("bf16", 2.0), ("fp8", 1.0)])
def test_gemm_matches_every_measured_row(
    tables: cb.Tables, cal: cb.Calibration, dtype: str, dtype_bytes: float
) -> None:
    g = tables.gemm
    sel = g["dtype_bytes"] == dtype_bytes
    off = ok.GEMM_BF16 if dtype == "bf16" else ok.GEMM_FP8
    predicted = gemm_predictions(g, sel, dtype_bytes, cal.gemm[off : off + ok.GEMM_NPARAMS])
    median, p90 = report(f"GEMM {dtype}", predicted, g["ms"][sel], gemm_describer(g, sel))
    assert median < MEDIAN_APE_MAX
    assert p90 < P90_APE_MAX


def prefill_predictions(t: dict[str, np.ndarray], vector: np.ndarray) -> np.ndarray:
    return np.array(
        [
            ok.attn_prefill_ms(b, s, 0.0, h, hkv, d, d, H100_BF16_FLOPS_PER_S, vector)
            for b, s, h, hkv, d in zip(t["B"], t["S"], t["H"], t["Hkv"], t["D"], strict=True)
        ]
    )


def decode_predictions(
    t: dict[str, np.ndarray], vector: np.ndarray, hbm_bytes_per_s: float = H100_HBM_BYTES_PER_S
) -> np.ndarray:
    return np.array(
        [
            ok.attn_decode_ms(b, ctx, h, hkv, d, 2.0, 2.0, hbm_bytes_per_s, 0.0, vector)
            for b, ctx, h, hkv, d in zip(t["B"], t["L"], t["H"], t["Hkv"], t["D"], strict=True)
        ]
    )


def attention_describer(t: dict[str, np.ndarray], length: str) -> Callable[[int], str]:
    return lambda i: (
        f"B={t['B'][i]:.0f} {length}={t[length][i]:.0f} H={t['H'][i]:.0f} Hkv={t['Hkv'][i]:.0f}"
    )


def test_prefill_attention_matches_every_measured_row(
    tables: cb.Tables, cal: cb.Calibration
) -> None:
    t = tables.attn_prefill
    predicted = prefill_predictions(t, cal.attn_prefill)
    median, p90 = report("prefill attention", predicted, t["ms"], attention_describer(t, "S"))
    assert median < MEDIAN_APE_MAX
    assert p90 < P90_APE_MAX


def test_decode_attention_matches_every_measured_row(
    tables: cb.Tables, cal: cb.Calibration
) -> None:
    t = tables.attn_decode
    predicted = decode_predictions(t, cal.attn_decode)
    median, p90 = report("decode attention", predicted, t["ms"], attention_describer(t, "L"))
    assert median < MEDIAN_APE_MAX
    assert p90 < P90_APE_MAX


# ----------------------------------------------------------------------------- held out


def model_shapes(*names: str) -> set[tuple[float, float]]:
    return {(float(n), float(k)) for n, k in gemm_shapes([load_model(m) for m in names])}


@pytest.mark.parametrize("dtype,dtype_bytes", [("bf16", 2.0), ("fp8", 1.0)])
def test_gemm_predicts_a_model_it_was_not_fitted_on(
    tables: cb.Tables, dtype: str, dtype_bytes: float
) -> None:
    """Fit on the (N, K) of Llama-3.1-8B and -70B at TP 1/2/4/8, test on Qwen3-32B's others."""
    g = tables.gemm
    train = model_shapes("llama-3.1-8b", "llama-3.1-70b")
    test = model_shapes("qwen3-32b") - train
    shape = list(zip(g["N"], g["K"], strict=True))
    in_train = np.array([s in train for s in shape])
    in_test = np.array([s in test for s in shape])
    assert len(test) >= 12 and in_test.any()
    assert not (in_train & in_test).any()
    subset = {key: col[in_train] for key, col in g.items()}
    peaks = cb.measured_peaks("h100-sxm", tables.meta)
    params = cb.fit_gemm(subset, dtype_bytes, peaks)
    sel = in_test & (g["dtype_bytes"] == dtype_bytes)
    predicted = gemm_predictions(g, sel, dtype_bytes, params)
    median, p90 = report(
        f"GEMM {dtype}, held out (fit on Llama shapes, tested on Qwen3-32B)",
        predicted,
        g["ms"][sel],
        gemm_describer(g, sel),
    )
    assert median < HELD_OUT_MEDIAN_APE_MAX
    assert p90 < HELD_OUT_P90_APE_MAX


LLAMA_8B_HEADS = (32.0, 8.0)  # heads, KV heads of Llama-3.1-8B at TP 1


def split_by_heads(t: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    held = (t["H"] == LLAMA_8B_HEADS[0]) & (t["Hkv"] == LLAMA_8B_HEADS[1])
    assert held.any() and (~held).any()
    return {key: col[~held] for key, col in t.items()}, held


def test_prefill_attention_predicts_head_counts_it_was_not_fitted_on(tables: cb.Tables) -> None:
    """Fit on the 70B / Qwen3-32B head layouts, test on Llama-3.1-8B's (32 heads, 8 KV)."""
    t = tables.attn_prefill
    train, held = split_by_heads(t)
    peaks = cb.measured_peaks("h100-sxm", tables.meta)
    vector = cb.fit_prefill(train, 132.0, peaks)
    test = {key: col[held] for key, col in t.items()}
    predicted = prefill_predictions(test, vector)
    median, p90 = report(
        "prefill attention, held out (Llama-3.1-8B heads)",
        predicted,
        test["ms"],
        attention_describer(test, "S"),
    )
    assert median < HELD_OUT_MEDIAN_APE_MAX
    assert p90 < HELD_OUT_P90_APE_MAX


def test_decode_attention_predicts_contexts_it_was_not_fitted_on(tables: cb.Tables) -> None:
    """Fit on contexts 512, 2048, 8192, 32768; test on 1024, 4096, 16384 (interpolation)."""
    t = tables.attn_decode
    held = np.isin(t["L"], [1024.0, 4096.0, 16384.0])
    peaks = cb.measured_peaks("h100-sxm", tables.meta)
    vector = cb.fit_decode({key: col[~held] for key, col in t.items()}, 132.0, peaks)
    test = {key: col[held] for key, col in t.items()}
    predicted = decode_predictions(test, vector)
    median, p90 = report(
        "decode attention, held out (contexts 1k, 4k, 16k)",
        predicted,
        test["ms"],
        attention_describer(test, "L"),
    )
    assert median < HELD_OUT_MEDIAN_APE_MAX
    assert p90 < HELD_OUT_P90_APE_MAX


# ----------------------------------------------------------------------------- the fit itself


def test_fitted_efficiencies_are_physical(cal: cb.Calibration) -> None:
    """Shares of the datasheet peaks stay below one and near what the README measured."""
    bf16 = cal.gemm[ok.GEMM_BF16 : ok.GEMM_BF16 + ok.GEMM_NPARAMS]
    fp8 = cal.gemm[ok.GEMM_FP8 : ok.GEMM_FP8 + ok.GEMM_NPARAMS]
    for p in (bf16, fp8):
        assert 0.5 < p[ok.G_E_MMA] <= 1.0
        assert 0.7 < p[ok.G_E_MEM] <= 1.0
        assert 0.002 < p[ok.G_T_LAUNCH_MS] < 0.02
    assert 0.8 < cal.attn_decode[ok.D_E_HBM] <= 1.0  # ~3.1 TB/s of 3.35 on long contexts
    assert 0.4 < cal.attn_prefill[ok.P_E_WORK] <= 1.0


def test_loading_is_cached(cal: cb.Calibration) -> None:
    assert cb.load_calibration("h100-sxm") is cal
    assert cb.load_calibration() is cal


# ----------------------------------------------------------------------------- malformed tables


def copy_tables(src: cb.Tables, dst: Path) -> None:
    """Write the h100 tables (with the peaks in meta.csv) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    meta = {
        **src.meta,
        "bf16_peak_flops_per_s": str(H100_BF16_FLOPS_PER_S),
        "fp8_peak_flops_per_s": str(H100_FP8_FLOPS_PER_S),
        "hbm_peak_bytes_per_s": str(H100_HBM_BYTES_PER_S),
    }
    (dst / "meta.csv").write_text("key,value\n" + "".join(f"{k},{v}\n" for k, v in meta.items()))
    g = src.gemm
    dtype = {2.0: "bf16", 1.0: "fp8"}
    (dst / "gemm.csv").write_text(
        "dtype,M,N,K,ms,tflops\n"
        + "".join(
            f"{dtype[b]},{m:.0f},{n:.0f},{k:.0f},{float(t)!r},0\n"
            for b, m, n, k, t in zip(g["dtype_bytes"], g["M"], g["N"], g["K"], g["ms"], strict=True)
        )
    )
    for name, length in (("attn_prefill.csv", "S"), ("attn_decode.csv", "L")):
        t = src.attn_prefill if length == "S" else src.attn_decode
        rows = zip(t["B"], t[length], t["H"], t["Hkv"], t["D"], t["ms"], strict=True)
        (dst / name).write_text(
            f"B,{length},H,Hkv,D,ms\n"
            + "".join(
                f"{b:.0f},{s:.0f},{h:.0f},{hkv:.0f},{d:.0f},{float(ms)!r}\n"
                for b, s, h, hkv, d, ms in rows
            )
        )


def test_a_directory_of_tables_with_peaks_in_meta_calibrates_like_the_packaged_one(
    tables: cb.Tables, cal: cb.Calibration, tmp_path: Path
) -> None:
    copy_tables(tables, tmp_path / "my-gpu")
    mine = cb.load_calibration(str(tmp_path / "my-gpu"))
    assert mine.name == "my-gpu"
    np.testing.assert_allclose(mine.gemm, cal.gemm, rtol=1e-6)
    np.testing.assert_allclose(mine.attn_decode, cal.attn_decode, rtol=1e-6)


def test_missing_calibration_is_a_calibration_error() -> None:
    with pytest.raises(CalibrationError):
        cb.load_calibration("no-such-gpu")


@pytest.mark.parametrize(
    "filename,old,new",
    [
        ("gemm.csv", "dtype,M,N,K,ms,tflops", "dtype,M,N,K,time,tflops"),
        ("attn_decode.csv", "\n1,512,", "\n1,five-twelve,"),
        ("gemm.csv", "\nbf16,", "\nint4,"),
        ("meta.csv", "sms,", "sm_count,"),
    ],
)
def test_malformed_tables_are_calibration_errors(
    tables: cb.Tables, tmp_path: Path, filename: str, old: str, new: str
) -> None:
    copy_tables(tables, tmp_path)
    path = tmp_path / filename
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(CalibrationError):
        cb.fit_tables(str(tmp_path), cb.read_tables(str(tmp_path)))


def test_missing_table_file_is_a_calibration_error(tables: cb.Tables, tmp_path: Path) -> None:
    copy_tables(tables, tmp_path)
    (tmp_path / "attn_prefill.csv").unlink()
    with pytest.raises(CalibrationError):
        cb.read_tables(str(tmp_path))


# ----------------------------------------------------------------------------- H200

H200_HBM_BYTES_PER_S = 4.8e12  # datasheet; bf16 and fp8 peaks are the H100's (gpus.yaml)
# Quick tables of three MoE models' shapes, measured with the same collector on the same H200 in
# the same session as pdplanner/planner/perf/data/h200-sxm (`--quick --models
# qwen3-235b-a22b,deepseek-v3,mixtral-8x7b`): expert FFN slices as narrow as 192 and 256 columns,
# 64/4 and 8/1 attention heads, none of which the packaged tables hold.
H200_MOE_QUICK = Path(__file__).resolve().parents[1] / "fixtures" / "h200-sxm-moe-quick"


def all_predictions(
    t: cb.Tables, cal: cb.Calibration, hbm_bytes_per_s: float
) -> dict[str, tuple[np.ndarray, np.ndarray, Callable[[int], str]]]:
    """Every table of ``t`` predicted with ``cal`` on a GPU with the H100's peaks and
    ``hbm_bytes_per_s``: {table: (predicted, measured, describe)}."""
    out: dict[str, tuple[np.ndarray, np.ndarray, Callable[[int], str]]] = {}
    g = t.gemm
    for dtype, dtype_bytes, off in (("bf16", 2.0, ok.GEMM_BF16), ("fp8", 1.0, ok.GEMM_FP8)):
        sel = g["dtype_bytes"] == dtype_bytes
        if not sel.any():
            continue
        params = cal.gemm[off : off + ok.GEMM_NPARAMS]
        predicted = gemm_predictions(g, sel, dtype_bytes, params, hbm_bytes_per_s)
        out[f"GEMM {dtype}"] = (predicted, g["ms"][sel], gemm_describer(g, sel))
    p = t.attn_prefill
    out["prefill attention"] = (
        prefill_predictions(p, cal.attn_prefill),
        p["ms"],
        attention_describer(p, "S"),
    )
    d = t.attn_decode
    decode = decode_predictions(d, cal.attn_decode, hbm_bytes_per_s)
    out["decode attention"] = (decode, d["ms"], attention_describer(d, "L"))
    return out


def test_h200_tables_are_measured_on_an_h200() -> None:
    meta = cb.read_tables("h200-sxm").meta
    assert meta["device"] == "NVIDIA H200"
    assert float(meta["hbm_peak_bytes_per_s"]) == H200_HBM_BYTES_PER_S
    assert float(meta["bf16_peak_flops_per_s"]) == H100_BF16_FLOPS_PER_S


def test_h200_own_fit_matches_every_measured_row() -> None:
    cal = cb.load_calibration("h200-sxm")
    for label, (predicted, measured, describe) in all_predictions(
        cb.read_tables("h200-sxm"), cal, H200_HBM_BYTES_PER_S
    ).items():
        median, p90 = report(f"H200 {label}, own fit", predicted, measured, describe)
        assert median < MEDIAN_APE_MAX
        assert p90 < P90_APE_MAX


def test_h100_fit_scaled_to_h200_peaks_predicts_the_h200_tables() -> None:
    """What every GPU without tables gets: the H100's efficiencies at this GPU's datasheet peaks.
    On the H200 (same compute peaks, 4.8 instead of 3.35 TB/s) it is a test on a GPU the fit
    never saw."""
    for label, (predicted, measured, describe) in all_predictions(
        cb.read_tables("h200-sxm"), cb.load_calibration("h100-sxm"), H200_HBM_BYTES_PER_S
    ).items():
        median, p90 = report(f"H200 {label}, H100 fit scaled", predicted, measured, describe)
        assert median < HELD_OUT_MEDIAN_APE_MAX
        assert p90 < HELD_OUT_P90_APE_MAX


def test_h200_fit_predicts_moe_shapes_it_was_not_fitted_on() -> None:
    """The packaged H200 fit (dense Llama/Qwen3 shapes) on the quick tables of MoE models'
    shapes; rows whose GEMM shape or attention heads the packaged tables hold are left out."""
    fitted = cb.read_tables("h200-sxm")
    held = cb.read_tables(str(H200_MOE_QUICK))
    known = set(zip(fitted.gemm["N"], fitted.gemm["K"], strict=True))
    new = np.array([s not in known for s in zip(held.gemm["N"], held.gemm["K"], strict=True)])
    heads = set(zip(fitted.attn_decode["H"], fitted.attn_decode["Hkv"], strict=True))
    new_heads = {
        name: np.array([s not in heads for s in zip(t["H"], t["Hkv"], strict=True)])
        for name, t in (("prefill", held.attn_prefill), ("decode", held.attn_decode))
    }
    assert new.sum() >= 50 and all(v.sum() >= 10 for v in new_heads.values())
    only_new = cb.Tables(
        held.meta,
        {k: v[new] for k, v in held.gemm.items()},
        {k: v[new_heads["prefill"]] for k, v in held.attn_prefill.items()},
        {k: v[new_heads["decode"]] for k, v in held.attn_decode.items()},
    )
    for label, (predicted, measured, describe) in all_predictions(
        only_new, cb.load_calibration("h200-sxm"), H200_HBM_BYTES_PER_S
    ).items():
        median, p90 = report(f"H200 {label}, MoE shapes held out", predicted, measured, describe)
        assert median < HELD_OUT_MEDIAN_APE_MAX
        assert p90 < HELD_OUT_P90_APE_MAX


H200_GROUPED_GEMM = Path(__file__).resolve().parents[1] / "fixtures" / "h200-grouped-gemm"


def test_grouped_gemm_model_is_a_lower_bound_of_pytorchs_grouped_gemm_on_h200() -> None:
    """``kernels.grouped_gemm_ms`` (the step model's MoE GEMM, engine calibration) against
    ``torch._grouped_mm`` measured on the H200 (tools/measure_grouped_gemm.py): 8-128 experts
    of Qwen3-235B's and DeepSeek-V3's slices at 1-32 tokens each.

    What it shows: the model assumes the experts' weights stream at 85% of HBM bandwidth
    (``EXPERT_WEIGHT_BW_EFFICIENCY``); PyTorch's grouped GEMM reaches 1.0-3.3 of 4.8 TB/s, lowest
    for narrow down-projections (K 384-768) and few experts, so the model is 20-50% faster on
    every row (median ratio about 0.7). Engines' MoE kernels differ from PyTorch's (the
    TensorRT-LLM Qwen3 rows of shared/serving-runs decode within ~10% of the model; vLLM's
    measure about twice it, tests/unit/test_moe_decode_accuracy.py), so the model is not refitted
    to this kernel; the check keeps it an optimistic bound of a real grouped kernel."""
    import csv

    from pdplanner.planner.catalog import load_engine, load_gpu, load_model
    from pdplanner.planner.perf import kernels
    from pdplanner.planner.perf.params import PerfContext

    ctx = PerfContext.build(
        load_model("qwen3-235b-a22b"), load_gpu("h200-sxm"), load_engine("vllm"), "bf16", "bf16"
    )
    with (H200_GROUPED_GEMM / "grouped_gemm.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 96
    ratios = []
    for r in rows:
        experts, per = float(r["experts"]), float(r["tokens_per_expert"])
        n, k, ms = float(r["N"]), float(r["K"]), float(r["ms"])
        predicted = kernels.grouped_gemm_ms(experts * per, experts, n, k, 2.0, ctx.hv, ctx.cal.gemm)
        ratios.append(predicted / ms)
        tbps = experts * n * k * 2.0 / (ms * 1e-3) / 1e12
        assert tbps < 4.8  # the measurement stays under the datasheet bandwidth
    ratio = np.array(ratios)
    print(
        f"\ngrouped GEMM on H200, model / measured: median {np.median(ratio):.2f}, "
        f"min {ratio.min():.2f}, max {ratio.max():.2f} over {ratio.size} rows"
    )
    assert ratio.max() < 1.0
