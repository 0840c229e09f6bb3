"""Calibration of the kernel primitives (``pdplanner/planner/perf/opkernels.py``) on measured
tables.

A calibration is a directory of four CSV files written by ``python -m
pdplanner.planner.perf.collect`` (format in ``pdplanner/planner/perf/data/README.md``): ``meta.csv``
(device facts), ``gemm.csv``,
``attn_prefill.csv`` and ``attn_decode.csv`` (median kernel times in milliseconds).

Fitting. Each primitive's formula has a few parameters with a physical meaning (efficiencies,
per-tile fixed work, fixed latencies; see ``opkernels``). They are fitted to every row of the
table by robust non-linear least squares on ``log(predicted / measured)``, so each row weighs by
its relative error and a few bad measurements (a clock hiccup) cannot drag the fit: the loss is
soft-L1 (quadratic within about 5 %, linear beyond). The solver is Levenberg-Marquardt with a
forward-difference Jacobian, over parameters mapped to their bounds by a logistic function of
their logarithm, started from values typical of an H100 so that it converges in a few dozen
steps. bf16 and fp8 GEMMs are fitted separately; a table without fp8 rows reuses the bf16 set.

Efficiencies are shares of the peaks of the GPU the tables were measured on. The peaks come from
``meta.csv`` (keys ``bf16_peak_flops_per_s``, ``fp8_peak_flops_per_s``,
``hbm_peak_bytes_per_s``) or, failing that, from the GPU catalog entry named like the calibration
(a missing fp8 peak is taken as twice the bf16 one).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pdplanner.planner.catalog.gpus import load_gpu
from pdplanner.planner.errors import CalibrationError, PlannerError
from pdplanner.planner.perf import opkernels as ok

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm.csv": ("dtype", "M", "N", "K", "ms", "tflops"),
    "attn_prefill.csv": ("B", "S", "H", "Hkv", "D", "ms"),
    "attn_decode.csv": ("B", "L", "H", "Hkv", "D", "ms"),
}
GEMM_DTYPE_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0}
PEAK_KEYS = ("bf16_peak_flops_per_s", "fp8_peak_flops_per_s", "hbm_peak_bytes_per_s")

ROBUST_SCALE = 0.05  # soft-L1 loss: residuals (in log time) beyond ~5 % count linearly


class Param(NamedTuple):
    """How one parameter is fitted: its start, bounds and what it scales with.

    ``kind`` is "eff" for a share of a peak (time goes as its inverse), "ms" for a latency and
    "" for a shape constant; ``fit_log_least_squares`` rescales the starts by kind.
    """

    start: float
    lo: float
    hi: float
    kind: str = ""


# Fitted parameters, in the order of opkernels' *_PARAM_NAMES (after n_sm for attention).
# Starts are typical of an H100; bounds are wide enough for any GPU.
GEMM_PARAMS: tuple[Param, ...] = (
    Param(0.006, 1e-4, 0.1, "ms"),  # t_launch_ms
    Param(0.85, 0.02, 1.0, "eff"),  # e_mma
    Param(0.88, 0.02, 1.2, "eff"),  # e_mem
    Param(4.0, 1.0, 16.0),  # overlap_s
    Param(120.0, 1.0, 4096.0),  # k_tile
    Param(800.0, 1.0, 65536.0),  # n_narrow
    Param(1.5, 0.1, 4.0),  # narrow_exp
    Param(0.2, 1e-3, 1.0),  # derate
    Param(0.4, 1e-3, 100.0, "ms"),  # t_derate_ms
    Param(0.01, 1e-4, 0.1, "ms"),  # t_fill_ms
    Param(0.02, 1e-4, 1.0, "ms"),  # t_ramp_ms
)
PREFILL_PARAMS: tuple[Param, ...] = (
    Param(0.007, 1e-4, 0.1, "ms"),  # t_launch_ms
    Param(0.64, 0.02, 1.0, "eff"),  # e_work
    Param(0.9, 0.02, 2.0, "eff"),  # e_tile
    Param(180.0, 1.0, 8192.0),  # l_tile
    Param(1.2, 1.0, 16.0),  # overlap_s
)
DECODE_PARAMS: tuple[Param, ...] = (
    Param(0.0065, 1e-4, 0.1, "ms"),  # t_launch_ms
    Param(0.93, 0.02, 1.2, "eff"),  # e_hbm
    Param(0.5, 1e-3, 1e4),  # u_few
    Param(1.2, 0.1, 4.0),  # few_exp
    Param(0.0045, 1e-5, 0.1, "ms"),  # t_split_ms
    Param(0.012, 1e-4, 0.1, "ms"),  # t_fill_ms
    Param(0.02, 1e-4, 1.0, "ms"),  # t_ramp_ms
)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Fitted parameters of the kernel primitives, one read-only float64 vector per primitive
    (layout: ``opkernels.GEMM_PARAM_NAMES``, ``PREFILL_PARAM_NAMES``, ``DECODE_PARAM_NAMES``)."""

    name: str
    gemm: np.ndarray
    attn_prefill: np.ndarray
    attn_decode: np.ndarray


@dataclass(frozen=True)
class Tables:
    """The measured tables of one calibration, as float64 columns."""

    meta: dict[str, str]
    gemm: dict[str, np.ndarray]  # dtype_bytes, M, N, K, ms
    attn_prefill: dict[str, np.ndarray]  # B, S, H, Hkv, D, ms
    attn_decode: dict[str, np.ndarray]  # B, L, H, Hkv, D, ms


@dataclass(frozen=True)
class Peaks:
    """Datasheet ceilings of the GPU the tables were measured on."""

    bf16_flops_per_s: float
    fp8_flops_per_s: float
    hbm_bytes_per_s: float


# ------------------------------------------------------------------------------------ reading


def _directory(name: str) -> Traversable:
    """``pdplanner/planner/perf/data/<name>`` or, when ``name`` is an existing directory, that
    directory."""
    if name and Path(name).is_dir():
        return Path(name)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise CalibrationError(f"calibration {name!r}: no such directory")
    return resources.files("pdplanner.planner.perf").joinpath("data", name)


def _read_csv(directory: Traversable, filename: str) -> list[dict[str, str]]:
    try:
        text = directory.joinpath(filename).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read {filename} in {directory}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    return list(reader) if reader.fieldnames else []


def _columns(
    rows: list[dict[str, str]], filename: str, numeric: Sequence[str]
) -> dict[str, np.ndarray]:
    """Numeric columns of ``rows``; every value must be a finite number, times positive."""
    if not rows:
        raise CalibrationError(f"{filename} has no rows")
    missing = [c for c in TABLE_COLUMNS[filename] if c not in rows[0]]
    if missing:
        raise CalibrationError(f"{filename} lacks column(s) {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    for col in numeric:
        values = np.empty(len(rows))
        for i, row in enumerate(rows):
            try:
                values[i] = float(row[col])
            except (TypeError, ValueError):
                raise CalibrationError(
                    f"{filename} line {i + 2}: {col} = {row[col]!r} is not a number"
                ) from None
        if not np.all(np.isfinite(values) & (values > 0.0)):
            bad = int(np.flatnonzero(~(np.isfinite(values) & (values > 0.0)))[0])
            raise CalibrationError(f"{filename} line {bad + 2}: {col} must be a positive number")
        out[col] = values
    return out


def read_tables(name: str = "h100-sxm") -> Tables:
    """Read and check the four CSV files of calibration ``name``."""
    directory = _directory(name)
    meta_rows = _read_csv(directory, "meta.csv")
    if not meta_rows or "key" not in meta_rows[0] or "value" not in meta_rows[0]:
        raise CalibrationError("meta.csv must have columns key, value")
    meta = {r["key"]: r["value"] for r in meta_rows}

    rows = _read_csv(directory, "gemm.csv")
    gemm = _columns(rows, "gemm.csv", ("M", "N", "K", "ms"))
    try:
        gemm["dtype_bytes"] = np.array([GEMM_DTYPE_BYTES[r["dtype"]] for r in rows])
    except KeyError as exc:
        raise CalibrationError(f"gemm.csv: unknown dtype {exc.args[0]!r} (bf16 or fp8)") from None
    prefill = _columns(
        _read_csv(directory, "attn_prefill.csv"),
        "attn_prefill.csv",
        ("B", "S", "H", "Hkv", "D", "ms"),
    )
    decode = _columns(
        _read_csv(directory, "attn_decode.csv"),
        "attn_decode.csv",
        ("B", "L", "H", "Hkv", "D", "ms"),
    )
    return Tables(meta, gemm, prefill, decode)


def _meta_float(meta: dict[str, str], key: str) -> float | None:
    if key not in meta:
        return None
    try:
        value = float(meta[key])
    except ValueError:
        raise CalibrationError(f"meta.csv: {key} = {meta[key]!r} is not a number") from None
    if not value > 0.0:
        raise CalibrationError(f"meta.csv: {key} must be positive")
    return value


def measured_peaks(name: str, meta: dict[str, str]) -> Peaks:
    """The datasheet peaks of the measured GPU: from ``meta.csv`` or the GPU catalog."""
    values = [_meta_float(meta, k) for k in PEAK_KEYS]
    if values[0] is not None and values[2] is not None:
        return Peaks(values[0], values[1] or 2.0 * values[0], values[2])
    try:
        gpu = load_gpu(Path(name).name)
    except PlannerError:
        raise CalibrationError(
            f"calibration {name!r}: meta.csv has no {PEAK_KEYS[0]} / {PEAK_KEYS[2]} and no GPU "
            "of that name is in the catalog"
        ) from None
    fp8 = gpu.fp8_flops_per_s or 2.0 * gpu.bf16_flops_per_s
    return Peaks(gpu.bf16_flops_per_s, fp8, gpu.hbm_bytes_per_s)


# ------------------------------------------------------------------------------------ fitting


def _levenberg_marquardt(
    residual: Callable[[np.ndarray], np.ndarray], z: np.ndarray, max_iter: int
) -> tuple[np.ndarray, float]:
    """Minimise the soft-L1 loss of ``residual(z)`` from ``z``; returns (z, loss)."""

    def loss(r: np.ndarray) -> float:
        u = (r / ROBUST_SCALE) ** 2
        return float(np.sum(2.0 * ROBUST_SCALE**2 * (np.sqrt(1.0 + u) - 1.0)))

    r = residual(z)
    cost = loss(r)
    damping = 1e-3
    step_z = 1e-6
    for _ in range(max_iter):
        weight = (1.0 + (r / ROBUST_SCALE) ** 2) ** -0.25  # IRLS weights of the soft-L1 loss
        jac = np.empty((r.size, z.size))
        for j in range(z.size):
            dz = z.copy()
            dz[j] += step_z
            jac[:, j] = (residual(dz) - r) / step_z
        jw = jac * weight[:, None]
        normal = jw.T @ jw
        gradient = jw.T @ (r * weight)
        improved = False
        while damping < 1e10:
            lhs = normal + damping * (np.diag(np.diag(normal)) + 1e-12 * np.eye(z.size))
            try:
                delta = np.linalg.solve(lhs, -gradient)
            except np.linalg.LinAlgError:
                damping *= 4.0
                continue
            r_new = residual(z + delta)
            cost_new = loss(r_new)
            if cost_new < cost:
                improved = cost - cost_new > 1e-9 * cost
                z, r, cost = z + delta, r_new, cost_new
                damping = max(damping / 3.0, 1e-9)
                break
            damping *= 4.0
        if not improved:
            break
    return z, cost


def fit_log_least_squares(
    predict: Callable[[np.ndarray], np.ndarray],
    measured: np.ndarray,
    spec: Sequence[Param],
    max_iter: int = 60,
) -> np.ndarray:
    """Parameters (as described by ``spec``) minimising the soft-L1 loss of
    ``log(predict(params) / measured)``, by Levenberg-Marquardt.

    Each parameter is searched as ``z`` with ``log p = log lo + (log hi - log lo) * sigmoid(z)``,
    which keeps it positive and inside its bounds without constraints in the solver. The search
    starts from three points and keeps the best end: the typical values; the same with every
    efficiency scaled so that the slowest quarter of the rows (where latencies do not matter) is
    matched in the median; and the typical values with every time (latencies up, efficiencies
    down) scaled so that all rows are matched in the median. Tables of a GPU much slower or
    faster than its datasheet, relative to an H100, then start near their own optimum.
    """
    start = np.array([p.start for p in spec])
    lo = np.array([p.lo for p in spec])
    hi = np.array([p.hi for p in spec])
    log_lo = np.log(lo)
    log_span = np.log(hi) - log_lo
    log_measured = np.log(measured)
    eff = np.array([p.kind == "eff" for p in spec])
    ms = np.array([p.kind == "ms" for p in spec])

    def params(z: np.ndarray) -> np.ndarray:
        return np.exp(log_lo + log_span / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))

    def to_z(p: np.ndarray) -> np.ndarray:
        frac = np.clip((np.log(np.clip(p, lo, hi)) - log_lo) / log_span, 1e-4, 1.0 - 1e-4)
        return np.asarray(np.log(frac / (1.0 - frac)))

    def residual(z: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            r = np.log(predict(params(z))) - log_measured
        return np.asarray(np.where(np.isfinite(r), r, 1e3))

    r0 = residual(to_z(start))
    slow = log_measured >= np.quantile(log_measured, 0.75)
    eff_scale = np.exp(np.median(r0[slow]))  # times go as 1 / efficiency
    time_scale = np.exp(-np.median(r0))
    starts = [
        start,
        np.where(eff, start * eff_scale, start),
        np.where(eff, start / time_scale, np.where(ms, start * time_scale, start)),
    ]
    best_z, best_cost = to_z(start), np.inf
    for s in starts:
        z, cost = _levenberg_marquardt(residual, to_z(s), max_iter)
        if cost < best_cost:
            best_z, best_cost = z, cost
    return params(best_z)


def fit_gemm(gemm: dict[str, np.ndarray], dtype_bytes: float, peaks: Peaks) -> np.ndarray:
    """The GEMM parameter set of one dtype (``GEMM_NPARAMS`` values)."""
    sel = gemm["dtype_bytes"] == dtype_bytes
    m, n, k = gemm["M"][sel], gemm["N"][sel], gemm["K"][sel]
    peak = peaks.bf16_flops_per_s if dtype_bytes >= 1.5 else peaks.fp8_flops_per_s

    def predict(p: np.ndarray) -> np.ndarray:
        return np.asarray(ok.gemm_formula_ms(m, n, k, dtype_bytes, peak, peaks.hbm_bytes_per_s, p))

    _require_rows(int(sel.sum()), len(GEMM_PARAMS), f"gemm.csv ({dtype_bytes:g}-byte rows)")
    return fit_log_least_squares(predict, gemm["ms"][sel], GEMM_PARAMS)


def fit_prefill(t: dict[str, np.ndarray], n_sm: float, peaks: Peaks) -> np.ndarray:
    """The prefill-attention vector (``PREFILL_CAL_SIZE`` values, ``n_sm`` first)."""
    _require_rows(t["ms"].size, len(PREFILL_PARAMS), "attn_prefill.csv")

    def predict(p: np.ndarray) -> np.ndarray:
        full = np.concatenate(([n_sm], p))
        return np.asarray(
            ok.prefill_formula_ms(
                t["B"], t["S"], 0.0, t["H"], t["D"], t["D"], peaks.bf16_flops_per_s, full
            )
        )

    return np.concatenate(([n_sm], fit_log_least_squares(predict, t["ms"], PREFILL_PARAMS)))


def fit_decode(t: dict[str, np.ndarray], n_sm: float, peaks: Peaks) -> np.ndarray:
    """The decode-attention vector (``DECODE_CAL_SIZE`` values, ``n_sm`` first); bf16 K and V."""
    _require_rows(t["ms"].size, len(DECODE_PARAMS), "attn_decode.csv")

    def predict(p: np.ndarray) -> np.ndarray:
        full = np.concatenate(([n_sm], p))
        return np.asarray(
            ok.decode_formula_ms(
                t["B"],
                t["L"],
                t["H"],
                t["Hkv"],
                t["D"],
                2.0,
                2.0,
                peaks.hbm_bytes_per_s,
                full[ok.D_E_HBM],
                full,
            )
        )

    return np.concatenate(([n_sm], fit_log_least_squares(predict, t["ms"], DECODE_PARAMS)))


def _require_rows(rows: int, params: int, what: str) -> None:
    if rows < 2 * params:
        raise CalibrationError(f"{what}: {rows} rows are too few to fit {params} parameters")


def fit_tables(name: str, tables: Tables) -> Calibration:
    """Fit every primitive on ``tables`` (measured on GPU ``name``)."""
    peaks = measured_peaks(name, tables.meta)
    n_sm = _meta_float(tables.meta, "sms")
    if n_sm is None:
        raise CalibrationError("meta.csv lacks the key sms (streaming multiprocessors)")
    bf16 = fit_gemm(tables.gemm, 2.0, peaks)
    has_fp8 = bool(np.any(tables.gemm["dtype_bytes"] == 1.0))
    fp8 = fit_gemm(tables.gemm, 1.0, peaks) if has_fp8 else bf16
    gemm = np.concatenate((bf16, fp8))
    prefill = fit_prefill(tables.attn_prefill, n_sm, peaks)
    decode = fit_decode(tables.attn_decode, n_sm, peaks)
    for v in (gemm, prefill, decode):
        v.flags.writeable = False
    return Calibration(Path(name).name, gemm, prefill, decode)


@cache
def load_calibration(name: str = "h100-sxm") -> Calibration:
    """The fitted calibration ``name`` (a directory under ``pdplanner/planner/perf/data/``, or a
    path to a directory in the same format), fitted once per process: ``load_calibration()`` and
    ``load_calibration("h100-sxm")`` return the same object. Raises ``CalibrationError`` on
    missing or malformed tables."""
    return _fitted(name)


@cache
def _fitted(name: str) -> Calibration:
    return fit_tables(name, read_tables(name))


@cache
def engine_calibration(name: str = "h100-sxm") -> Calibration:
    """Calibration ``name`` as a serving engine runs the kernels: the tables' fit without its
    HBM fill terms (``t_fill_ms`` of the GEMM sets and of decode attention set to zero); what the
    step model prices. Raises as ``load_calibration``.

    Why. The tables time each kernel alone after ``do_bench`` flushes the L2 by writing zeros
    over a 256 MiB buffer (``pdplanner/planner/perf/collect.py``): the kernel starts with the L2
    full of dirty lines, and its first reads evict them to HBM. That write-back is the fill term: it
    saturates once the kernel has streamed about one L2 of data (the fitted ``t_ramp_ms`` times
    the streaming rate: 22 us x 2.9 TB/s = 65 MB for bf16 GEMMs, 20 us x 3.1 TB/s = 62 MB for
    decode attention, against the H100's 50 MB L2) and costs 10-13 us per kernel. In an engine
    step the kernels run back to back (a CUDA graph in decode) and the L2 holds the previous
    kernel's clean weight lines and a few MB of activations, so nothing comparable is written
    back. The launch latency stays: a kernel in a graph still waits for the one before it.
    Evidence: with the fill terms the decode steps of Qwen3-32B on H100 at small batches come
    out 0.8-3 ms too slow on all three engines of ``shared/serving-runs``, growing with the
    weight bytes per GPU as the fill terms do (tests/unit/test_serving_accuracy.py prints it)."""
    fitted = load_calibration(name)
    gemm = fitted.gemm.copy()
    gemm[ok.GEMM_BF16 + ok.G_FILL_MS] = 0.0
    gemm[ok.GEMM_FP8 + ok.G_FILL_MS] = 0.0
    decode = fitted.attn_decode.copy()
    decode[ok.D_FILL_MS] = 0.0
    for v in (gemm, decode):
        v.flags.writeable = False
    return Calibration(fitted.name, gemm, fitted.attn_prefill, decode)
