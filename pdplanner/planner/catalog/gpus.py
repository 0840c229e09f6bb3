"""GPU specifications: the built-in catalog and custom GPUs from a file of the same format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pdplanner.planner.catalog._catalog import Catalog
from pdplanner.planner.catalog._data import builtin_entries, optional, read_document, require
from pdplanner.planner.errors import InvalidInputError

Dtype = Literal["bf16", "fp8", "fp4"]
DTYPES: tuple[Dtype, ...] = ("bf16", "fp8", "fp4")
BYTES_PER_ELEMENT: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}


#: Reported capacity over the datasheet size read as GiB, for the B200 (183,359 MiB reported by
#: nvidia-smi, NVIDIA/TensorRT-LLM#10278, of "180 GB" = 184,320 MiB): the lowest share among the
#: HBM GPUs with a cited report (A100 1.0, H100 0.9956, H100 NVL 0.9956, H200 0.9958). A GPU with
#: no report is taken to report this share of its datasheet size; GDDR6 boards that keep ECC on
#: (L40S, L4) lose a further 1/16 and need their own report.
DERIVED_HBM_SHARE = 183_359 / 184_320


def derived_hbm_bytes(datasheet_bytes: float) -> float:
    """The capacity (bytes) a GPU with no device report is taken to report: its datasheet size
    (decimal GB as printed) read as GiB, times ``DERIVED_HBM_SHARE``, to whole MiB."""
    return float(round(datasheet_bytes / 1e9 * 1024 * DERIVED_HBM_SHARE) * 2**20)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: datasheet peaks, memory and links. Units are in the field names.

    ``hbm_bytes`` is the capacity the device reports (nvidia-smi / rocm-smi total), the figure
    engines take their memory fractions of; ``hbm_datasheet_bytes`` is the marketing figure beside
    it and ``hbm_reported`` the source of the former ("reported: ..." or "derived: ...").
    ``calibration`` names the measured kernel tables the performance model uses; a GPU whose
    own name differs is modelled with those efficiencies scaled to its datasheet peaks
    (``datasheet_scaled``). Sources: pdplanner/planner/catalog/data/gpus.yaml, one per entry.
    """

    name: str
    bf16_flops_per_s: float
    fp8_flops_per_s: float  # 0: no fp8 tensor cores
    fp4_flops_per_s: float  # 0: no fp4 tensor cores
    hbm_bytes: float  # as the device reports it
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, one direction
    nvlink_domain_size: int  # GPUs that share the NVLink fabric
    scaleout_bytes_per_s: float  # per GPU, between NVLink domains
    calibration: str = "h100-sxm"  # which measured tables shape the efficiency curves
    aliases: tuple[str, ...] = field(default=(), compare=False)
    hbm_datasheet_bytes: float = field(default=0.0, compare=False)  # 0: not given
    hbm_reported: str = field(default="", compare=False)  # where hbm_bytes comes from
    source: str = field(default="", compare=False)  # where the figures come from

    @property
    def hbm_basis(self) -> str:
        """How ``hbm_bytes`` was obtained: "reported" (a cited device report), "derived" (a
        stated rule, ``DERIVED_HBM_SHARE``), or "" when the entry does not say."""
        basis = self.hbm_reported.split(":", 1)[0].strip()
        return basis if basis in ("reported", "derived") else ""

    @property
    def datasheet_scaled(self) -> bool:
        """True when no measured tables of this GPU exist and another GPU's are scaled."""
        return self.calibration != self.name

    @property
    def model_basis(self) -> str:
        """How results on this GPU are obtained, in words ("calibrated" or "datasheet-scaled")."""
        return "datasheet-scaled" if self.datasheet_scaled else "calibrated"

    def flops_per_s(self, dtype: str) -> float:
        return {
            "bf16": self.bf16_flops_per_s,
            "fp8": self.fp8_flops_per_s,
            "fp4": self.fp4_flops_per_s,
        }[dtype]

    def supports(self, dtype: str) -> bool:
        return self.flops_per_s(dtype) > 0

    def check_dtype(self, dtype: str, field_path: str = "dtype") -> None:
        if dtype not in DTYPES:
            raise InvalidInputError(
                field_path, f"must be one of {', '.join(DTYPES)}, got {dtype!r}"
            )
        if not self.supports(dtype):
            have = [d for d in DTYPES if self.supports(d)]
            raise InvalidInputError(
                field_path, f"{self.name} has no {dtype} tensor cores (supports {', '.join(have)})"
            )


def gpu_from_entry(entry: dict[str, Any], field_path: str = "gpu") -> GpuSpec:
    """Build a ``GpuSpec`` from one entry of a GPU data file, checking every field."""
    if not isinstance(entry, dict):
        raise InvalidInputError(field_path, "a GPU entry must be a mapping")
    f = field_path
    flops = entry.get("flops_per_s")
    if not isinstance(flops, dict) or not flops:
        raise InvalidInputError(f"{f}.flops_per_s", "is required: a mapping of dtype to FLOP/s")
    unknown = set(flops) - set(DTYPES)
    if unknown:
        raise InvalidInputError(f"{f}.flops_per_s", f"unknown dtype {sorted(unknown)[0]!r}")
    rates = {d: optional(flops, d, float, 0.0, f"{f}.flops_per_s") for d in DTYPES}
    datasheet = optional(entry, "hbm_datasheet_bytes", float, 0.0, f)
    reported = optional(entry, "hbm_reported", str, "", f)
    if entry.get("hbm_bytes") is None and datasheet > 0:
        # no device figure given: derive it from the datasheet size by the catalog's rule
        hbm_bytes = derived_hbm_bytes(datasheet)
        reported = reported or (
            f"derived: {datasheet / 1e9:g} GB read as GiB x the B200 share, "
            f"{hbm_bytes / 2**20:.0f} MiB"
        )
    else:
        hbm_bytes = require(entry, "hbm_bytes", float, f)
    if rates["bf16"] <= 0:
        raise InvalidInputError(f"{f}.flops_per_s.bf16", "is required and must be positive")
    spec = GpuSpec(
        name=require(entry, "name", str, f),
        bf16_flops_per_s=rates["bf16"],
        fp8_flops_per_s=rates["fp8"],
        fp4_flops_per_s=rates["fp4"],
        hbm_bytes=hbm_bytes,
        hbm_bytes_per_s=require(entry, "hbm_bytes_per_s", float, f),
        nvlink_bytes_per_s=require(entry, "nvlink_bytes_per_s", float, f),
        nvlink_domain_size=require(entry, "nvlink_domain_size", int, f),
        scaleout_bytes_per_s=require(entry, "scaleout_bytes_per_s", float, f),
        calibration=optional(entry, "calibration", str, "h100-sxm", f),
        aliases=tuple(str(a) for a in entry.get("aliases", ()) or ()),
        hbm_datasheet_bytes=datasheet,
        hbm_reported=reported,
        source=optional(entry, "source", str, "", f),
    )
    for key in (
        "hbm_bytes",
        "hbm_bytes_per_s",
        "nvlink_bytes_per_s",
        "scaleout_bytes_per_s",
        "nvlink_domain_size",
    ):
        if getattr(spec, key) <= 0:
            raise InvalidInputError(f"{f}.{key}", "must be positive")
    if spec.hbm_datasheet_bytes < 0:
        raise InvalidInputError(f"{f}.hbm_datasheet_bytes", "must not be negative")
    if rates["fp8"] < 0 or rates["fp4"] < 0:
        raise InvalidInputError(f"{f}.flops_per_s", "rates must not be negative")
    for dtype, rate in rates.items():
        if rate:
            _in_range(rate, f"{f}.flops_per_s.{dtype}", "FLOPS_PER_S")
    for key in PHYSICAL_RANGES:
        if key != "FLOPS_PER_S":
            _in_range(getattr(spec, key), f"{f}.{key}", key)
    return spec


#: Physical ranges of a GPU's figures: about 100x either side of the catalog's GPUs (h100-sxm to
#: gb200-nvl72: 989 TFLOP/s bf16 to 10 PFLOP/s fp4, 80-186 GB of HBM at 2-8 TB/s, NVLink
#: 450-900 GB/s in domains of 8-72, 50 GB/s scale-out), so a GPU of the next generations fits and
#: a typo of a unit prefix (or 5e-324, or 1e308) does not reach the performance model, where it
#: would divide by zero or overflow.
PHYSICAL_RANGES: dict[str, tuple[float, float]] = {
    "FLOPS_PER_S": (1e12, 1e18),
    "hbm_bytes": (1e9, 1e14),
    "hbm_bytes_per_s": (1e10, 1e15),
    "nvlink_bytes_per_s": (1e9, 1e14),
    "scaleout_bytes_per_s": (1e8, 1e13),
    "nvlink_domain_size": (1, 4096),
}


def _in_range(value: float, field: str, key: str) -> None:
    lo, hi = PHYSICAL_RANGES[key]
    if not lo <= value <= hi:
        raise InvalidInputError(field, f"must be within {lo:g} and {hi:g}, got {value:g}")


def gpu_to_entry(spec: GpuSpec) -> dict[str, Any]:
    """The data-file form of a GPU (inverse of ``gpu_from_entry``)."""
    flops = {d: spec.flops_per_s(d) for d in DTYPES if spec.supports(d)}
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "flops_per_s": flops,
        "hbm_bytes": spec.hbm_bytes,
        "hbm_bytes_per_s": spec.hbm_bytes_per_s,
        "nvlink_bytes_per_s": spec.nvlink_bytes_per_s,
        "nvlink_domain_size": spec.nvlink_domain_size,
        "scaleout_bytes_per_s": spec.scaleout_bytes_per_s,
        "calibration": spec.calibration,
        **({"hbm_datasheet_bytes": spec.hbm_datasheet_bytes} if spec.hbm_datasheet_bytes else {}),
        **({"hbm_reported": spec.hbm_reported} if spec.hbm_reported else {}),
        **({"source": spec.source} if spec.source else {}),
    }


class GpuCatalog(Catalog[GpuSpec]):
    """Built-in GPUs plus custom ones; a path loads a YAML/JSON file of one entry (or a list)."""

    kind = "GPU"

    def __init__(self, extra: list[GpuSpec] | None = None) -> None:
        builtins = [
            gpu_from_entry(entry, f"gpus.yaml:{entry.get('name')}")
            for entry in builtin_entries("gpus.yaml")
        ]
        super().__init__(builtins + list(extra or []))

    def get(self, name: str, field_path: str = "gpu") -> GpuSpec:
        """A GPU by name or alias (never a file)."""
        return super().get(name, field_path)

    def _from_file(self, path: str, field_path: str) -> GpuSpec:
        doc = read_document(path, field_path)
        if isinstance(doc, list):
            if len(doc) != 1:
                raise InvalidInputError(field_path, f"{path} must hold exactly one GPU")
            doc = doc[0]
        return gpu_from_entry(doc, field_path)


_DEFAULT: GpuCatalog | None = None


def default_gpus() -> GpuCatalog:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = GpuCatalog()
    return _DEFAULT


def load_gpu(name_or_path: str, field_path: str = "gpu") -> GpuSpec:
    """A built-in GPU by name or alias, or a YAML/JSON file holding one entry."""
    return default_gpus().load(name_or_path, field_path)
