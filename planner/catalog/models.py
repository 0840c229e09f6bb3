"""Model architectures: the built-in catalog and Hugging Face config.json import.

A ``ModelSpec`` holds what the performance model needs: layer shapes, attention kind (GQA or MLA),
mixture-of-experts layout. Built-in models are stored as the architecture keys of their published
config.json, so ``model_from_hf_config`` is the only parser, for built-ins and user files alike.
Supported families: Llama, Qwen2/Qwen3 (dense), Mistral, Mixtral, Qwen2/Qwen3-MoE, DeepSeek-V2/V3.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from planner.catalog._catalog import Catalog
from planner.catalog._data import builtin_entries, convert, optional, read_document, require
from planner.errors import InvalidInputError

AttentionKind = Literal["gqa", "mla"]


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as the performance model sees it."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # FFN width of dense layers
    vocab_size: int
    tie_word_embeddings: bool = False
    attention: AttentionKind = "gqa"
    # Mixture of experts (num_experts == 0: dense model).
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    num_dense_layers: int = 0  # leading layers with a dense FFN in a MoE model
    # Multi-head latent attention (attention == "mla").
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def kv_elements_per_token_per_layer(self) -> int:
        """Cached elements per token per layer: K and V per KV head, or MLA's compressed latent."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    @property
    def attention_params(self) -> int:
        """Weights of one attention block (projections only)."""
        h = self.hidden_size
        if self.attention == "mla":
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (
                h * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_head
                if self.q_lora_rank
                else h * self.num_heads * qk_head
            )
            kv_down = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_up = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
            out = self.num_heads * self.v_head_dim * h
            return q + kv_down + kv_up + out
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        return qkv + self.num_heads * self.head_dim * h

    @property
    def total_params(self) -> int:
        """All weights, counting every expert."""
        dense_ffn = 3 * self.hidden_size * self.intermediate_size
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        moe_ffn = (
            self.num_experts + self.num_shared_experts
        ) * expert + self.hidden_size * self.num_experts
        ffn = (
            self.num_dense_layers * dense_ffn + self.num_moe_layers * moe_ffn
            if self.is_moe
            else self.num_layers * dense_ffn
        )
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.attention_params + ffn + embed

    @property
    def active_params(self) -> int:
        """Weights one token reads: routed experts counted ``experts_per_token`` times."""
        if not self.is_moe:
            return self.total_params
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        inactive = self.num_moe_layers * (self.num_experts - self.experts_per_token) * expert
        return self.total_params - inactive


def _first(cfg: dict[str, Any], keys: tuple[str, ...], default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


#: The integer keys of config.json that the model reads, with the largest value each may take:
#: about 16x the largest of the catalog's models (DeepSeek-R1: hidden 7168, 61 layers, 128
#: heads, 256 experts of 8 per token; Llama-3.1-405B: hidden 16384, 126 layers, intermediate
#: 53248; vocabularies up to 262,144), so future models fit and nonsense stops here, before it
#: is stored or reaches an int32 field of the API.
CONFIG_INT_MAX: dict[str, int] = {
    "hidden_size": 262_144,
    "num_hidden_layers": 4096,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "vocab_size": 4_194_304,
    "head_dim": 16_384,
    "intermediate_size": 1_048_576,
    "n_routed_experts": 16_384,
    "num_local_experts": 16_384,
    "num_experts": 16_384,
    "num_experts_per_tok": 1024,
    "num_experts_per_token": 1024,
    "moe_intermediate_size": 1_048_576,
    "n_shared_experts": 1024,
    "shared_expert_intermediate_size": 1_048_576,
    "first_k_dense_replace": 4096,
    "q_lora_rank": 262_144,
    "kv_lora_rank": 262_144,
    "qk_nope_head_dim": 16_384,
    "qk_rope_head_dim": 16_384,
    "v_head_dim": 16_384,
}


def check_config_numbers(cfg: dict[str, Any], field_path: str = "model") -> None:
    """Every integer key the model reads (``CONFIG_INT_MAX``), where present, is a whole number
    from 0 to its maximum; ``InvalidInputError`` names the key (``config.vocab_size``)."""
    for key, hi in CONFIG_INT_MAX.items():
        value = cfg.get(key)
        if value is None:
            continue
        number = convert(value, int, f"{field_path}.{key}")
        if not 0 <= number <= hi:
            raise InvalidInputError(
                f"{field_path}.{key}", f"must be within 0 and {hi:,}, got {number:,}"
            )
    mlp_only = cfg.get("mlp_only_layers")
    if mlp_only is not None and (not isinstance(mlp_only, list) or len(mlp_only) > 4096):
        raise InvalidInputError(
            f"{field_path}.mlp_only_layers", "must be a list of at most 4096 layer indices"
        )


def model_from_hf_config(cfg: dict[str, Any], name: str, field_path: str = "model") -> ModelSpec:
    """Build a ``ModelSpec`` from a Hugging Face ``config.json`` dictionary."""
    if not isinstance(cfg, dict):
        raise InvalidInputError(field_path, "config.json must hold a JSON object")
    if isinstance(
        cfg.get("text_config"), dict
    ):  # multimodal wrappers keep the LM under text_config
        cfg = {**cfg["text_config"], "architectures": cfg.get("architectures", [])}
    f = field_path
    check_config_numbers(cfg, f)
    hidden = require(cfg, "hidden_size", int, f)
    layers = require(cfg, "num_hidden_layers", int, f)
    heads = require(cfg, "num_attention_heads", int, f)
    kv_heads = optional(cfg, "num_key_value_heads", int, heads, f)
    vocab = require(cfg, "vocab_size", int, f)
    head_dim = optional(cfg, "head_dim", int, hidden // heads if heads else 0, f)
    inter = optional(cfg, "intermediate_size", int, 0, f)
    tie = bool(cfg.get("tie_word_embeddings", False))
    n_experts = int(_first(cfg, ("n_routed_experts", "num_local_experts", "num_experts"), 0) or 0)
    top_k = int(_first(cfg, ("num_experts_per_tok", "num_experts_per_token"), 0) or 0)
    moe_inter = int(_first(cfg, ("moe_intermediate_size",), inter) or 0)
    shared = int(_first(cfg, ("n_shared_experts",), 0) or 0)
    if cfg.get("shared_expert_intermediate_size"):  # Qwen2-MoE: one shared expert of its own width
        shared = max(1, round(cfg["shared_expert_intermediate_size"] / max(moe_inter, 1)))
    dense_layers = int(_first(cfg, ("first_k_dense_replace",), 0) or 0)
    mlp_only = cfg.get("mlp_only_layers") or []
    if n_experts and isinstance(mlp_only, list):
        dense_layers += len(mlp_only)
    mla = cfg.get("kv_lora_rank") is not None
    spec = ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads if mla else kv_heads,
        head_dim=optional(cfg, "v_head_dim", int, head_dim, f) if mla else head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        attention="mla" if mla else "gqa",
        num_experts=n_experts,
        experts_per_token=top_k if n_experts else 0,
        moe_intermediate_size=moe_inter if n_experts else 0,
        num_shared_experts=shared if n_experts else 0,
        num_dense_layers=dense_layers if n_experts else 0,
        q_lora_rank=int(cfg.get("q_lora_rank") or 0) if mla else 0,
        kv_lora_rank=int(cfg.get("kv_lora_rank") or 0) if mla else 0,
        qk_nope_head_dim=int(cfg.get("qk_nope_head_dim") or 0) if mla else 0,
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0) if mla else 0,
        v_head_dim=int(cfg.get("v_head_dim") or 0) if mla else 0,
    )
    validate_model(spec, f)
    return spec


def validate_model(spec: ModelSpec, field_path: str = "model") -> None:
    """Reject architectures the performance model cannot evaluate, naming the offending key."""
    positive = {
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise InvalidInputError(f"{field_path}.{key}", f"must be positive, got {value}")
    if spec.num_heads % spec.num_kv_heads:
        raise InvalidInputError(
            f"{field_path}.num_key_value_heads",
            f"must divide num_attention_heads ({spec.num_heads})",
        )
    if spec.is_moe:
        if not 0 < spec.experts_per_token <= spec.num_experts:
            raise InvalidInputError(
                f"{field_path}.num_experts_per_tok", f"must be in 1..{spec.num_experts}"
            )
        if spec.moe_intermediate_size <= 0:
            raise InvalidInputError(f"{field_path}.moe_intermediate_size", "must be positive")
        if spec.num_dense_layers >= spec.num_layers:
            raise InvalidInputError(
                f"{field_path}.first_k_dense_replace", "leaves no mixture-of-experts layer"
            )
    if (not spec.is_moe or spec.num_dense_layers) and spec.intermediate_size <= 0:
        raise InvalidInputError(f"{field_path}.intermediate_size", "must be positive")
    if spec.attention == "mla" and (spec.kv_lora_rank <= 0 or spec.qk_nope_head_dim <= 0):
        raise InvalidInputError(
            f"{field_path}.kv_lora_rank", "MLA needs kv_lora_rank and qk_nope_head_dim"
        )


class ModelCatalog(Catalog[ModelSpec]):
    """Built-in models plus custom ones; a path loads a Hugging Face config.json."""

    kind = "model"

    def __init__(self, extra: list[ModelSpec] | None = None) -> None:
        builtins = []
        for entry in builtin_entries("models.yaml"):
            spec = model_from_hf_config(
                entry["config"], entry["name"], f"models.yaml:{entry['name']}"
            )
            builtins.append(replace(spec, aliases=tuple(entry.get("aliases", ()))))
        super().__init__(builtins + list(extra or []))

    def get(self, name: str, field_path: str = "model") -> ModelSpec:
        """A model by name or alias (never a file)."""
        return super().get(name, field_path)

    def _from_file(self, path: str, field_path: str) -> ModelSpec:
        name, cfg = read_model_file(path, field_path)
        return model_from_hf_config(cfg, name, field_path)


def read_model_file(path: str, field_path: str = "model") -> tuple[str, dict[str, Any]]:
    """The name (a config.json's folder, else the file's stem) and config of a model file."""
    cfg = read_document(path, field_path)
    if not isinstance(cfg, dict):
        raise InvalidInputError(field_path, f"{path} must hold a JSON object")
    p = Path(path)
    stem = p.parent.name if p.name == "config.json" else p.stem
    return stem or path, cfg


_DEFAULT: ModelCatalog | None = None


def default_models() -> ModelCatalog:
    """The process-wide catalog of built-in models (built once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ModelCatalog()
    return _DEFAULT


def load_model(name_or_path: str, field_path: str = "model") -> ModelSpec:
    """A built-in model by name or alias, or a Hugging Face config.json (or YAML) file."""
    return default_models().load(name_or_path, field_path)
