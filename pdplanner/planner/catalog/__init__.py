"""Catalogs of models, GPUs and serving engines, stored as data files in ``data/``."""

from pdplanner.planner.catalog.engines import EngineSpec, engine_names, load_engine
from pdplanner.planner.catalog.gpus import (
    BYTES_PER_ELEMENT,
    DERIVED_HBM_SHARE,
    DTYPES,
    GpuCatalog,
    GpuSpec,
    default_gpus,
    derived_hbm_bytes,
    gpu_from_entry,
    gpu_to_entry,
    load_gpu,
)
from pdplanner.planner.catalog.models import (
    ModelCatalog,
    ModelSpec,
    checkpoint_dtype,
    default_models,
    fp8_block_experts,
    is_model_path,
    load_model,
    model_from_hf_config,
    read_model_file,
)

__all__ = [
    "BYTES_PER_ELEMENT",
    "DERIVED_HBM_SHARE",
    "DTYPES",
    "EngineSpec",
    "GpuCatalog",
    "GpuSpec",
    "ModelCatalog",
    "ModelSpec",
    "checkpoint_dtype",
    "default_gpus",
    "default_models",
    "derived_hbm_bytes",
    "engine_names",
    "fp8_block_experts",
    "gpu_from_entry",
    "gpu_to_entry",
    "is_model_path",
    "load_engine",
    "load_gpu",
    "load_model",
    "model_from_hf_config",
    "read_model_file",
]
