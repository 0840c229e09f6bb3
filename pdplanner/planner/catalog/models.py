"""Model architectures: the built-in catalog and Hugging Face config.json import.

A ``ModelSpec`` holds what the performance model needs: layer shapes, attention kind (GQA or MLA),
mixture-of-experts layout. Built-in models are stored as the architecture keys of their published
config.json, so ``model_from_hf_config`` is the only parser, for built-ins and user files alike.
Supported families (``SUPPORTED_ARCHITECTURES``): Llama, Llama-4 (interleaved MoE, chunked local
attention), Qwen2/Qwen3 (dense and MoE), Qwen3-Next (hybrid Gated DeltaNet), Mistral, Mixtral,
DeepSeek-V2/V3/V3.2 (MLA, sparse attention), gpt-oss (sliding window, sinks, MXFP4) and Kimi-K2.5
(a wrapped DeepSeek-V3 text model). Quantized checkpoints are read from ``quantization_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pdplanner.planner.catalog._catalog import Catalog, is_file_name
from pdplanner.planner.catalog._data import (
    builtin_entries,
    convert,
    optional,
    read_document,
    require,
)
from pdplanner.planner.errors import InvalidInputError

AttentionKind = Literal["gqa", "mla"]

# Bytes per stored weight element of each checkpoint quantization format, block scales included:
# MXFP4: 4-bit values + one 8-bit (E8M0) scale per 32; NVFP4: 4-bit values + one FP8 scale per 16
# (and a per-tensor FP32 scale, negligible); FP8 with 128x128 block scales (FP32 each, negligible);
# INT4 AWQ/GPTQ/compressed-tensors: 4-bit values + one 16-bit scale (and zero point) per group.
MXFP4_BYTES = 0.5 + 1.0 / 32.0
MXFP4_BLOCK = 32  # elements sharing one E8M0 scale
NVFP4_BYTES = 0.5 + 1.0 / 16.0
FP8_BYTES = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as the performance model sees it.

    Layer kinds: ``num_layers`` decoder layers, of which ``num_window_layers`` attend only to the
    last ``sliding_window`` tokens (sliding-window or chunked local attention: their KV cache
    stops at the window) and ``num_linear_layers`` are linear-attention layers (Gated DeltaNet:
    a fixed state of ``linear_state_elements`` per sequence, no growing KV cache; their shapes in
    the ``linear_*`` fields, named as in config.json); the rest are full-attention layers.
    ``index_topk`` > 0: DeepSeek sparse attention, each query attends to ``index_topk`` tokens
    picked by an indexer that caches ``index_head_dim`` fp8 values (plus a 4-byte scale) per
    token per layer. Weight storage: ``dense_weight_bytes`` and ``expert_weight_bytes`` are bytes
    per element as the checkpoint stores them, scales and block padding included (MXFP4 experts:
    ``mxfp4_expert_bytes``; 0: at the request's precision); embeddings and the LM head stay in
    bf16 (quantized checkpoints keep them unquantized).
    """

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
    num_dense_layers: int = 0  # layers with a dense FFN in a MoE model (leading or interleaved)
    # Multi-head latent attention (attention == "mla").
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    aliases: tuple[str, ...] = field(default=(), compare=False)
    # Attention variants.
    sliding_window: int = 0  # tokens a windowed layer attends to (0: none)
    num_window_layers: int = 0
    attention_sinks: bool = False  # one learned sink logit per head per layer (gpt-oss)
    attn_output_gate: bool = False  # q_proj also produces an output gate (Qwen3-Next)
    num_linear_layers: int = 0
    # Gated DeltaNet shapes of the linear-attention layers (config.json's names)
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    index_topk: int = 0
    index_head_dim: int = 0
    index_n_heads: int = 0
    index_params_per_layer: int = 0  # weights of one sparse-attention indexer
    # Checkpoint storage (bytes per element; 0: at the request's precision).
    dense_weight_bytes: float = 0.0
    expert_weight_bytes: float = 0.0
    quantization: str = ""  # the checkpoint's quantization, in words ("" : none)
    # Tokens one request may span, prompt and answer (config.json's max_position_embeddings; a
    # built-in's longest documented context); 0: not known, not checked.
    max_context: int = field(default=0, compare=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def linear_layer_params(self) -> int:
        """Weights of one Gated DeltaNet block: the q, k (key heads) and v, z (value heads)
        input projection, the beta/decay projection (two per value head), a short causal
        convolution over q/k/v, per-head decay parameters (A_log, dt_bias), the output norm's
        weight (one per value dim) and the output projection. 0 without linear layers."""
        if not self.num_linear_layers:
            return 0
        h, nv = self.hidden_size, self.linear_num_value_heads
        key = self.linear_num_key_heads * self.linear_key_head_dim
        value = nv * self.linear_value_head_dim
        conv = (2 * key + value) * self.linear_conv_kernel_dim
        return (
            h * (2 * key + 2 * value)
            + h * 2 * nv
            + conv
            + 2 * nv
            + self.linear_value_head_dim
            + value * h
        )

    @property
    def linear_state_elements(self) -> int:
        """State one sequence keeps per linear-attention layer: a key x value matrix per value
        head, and the last ``conv - 1`` inputs of the convolution."""
        if not self.num_linear_layers:
            return 0
        key = self.linear_num_key_heads * self.linear_key_head_dim
        value = self.linear_num_value_heads * self.linear_value_head_dim
        recurrent = (
            self.linear_num_value_heads * self.linear_key_head_dim * self.linear_value_head_dim
        )
        return recurrent + (self.linear_conv_kernel_dim - 1) * (2 * key + value)

    @property
    def num_attention_layers(self) -> int:
        """Layers with softmax attention (full or windowed)."""
        return self.num_layers - self.num_linear_layers

    @property
    def num_full_attention_layers(self) -> int:
        """Layers whose KV cache grows with the context."""
        return self.num_attention_layers - self.num_window_layers

    @property
    def kv_elements_per_token_per_layer(self) -> int:
        """Cached elements per token per layer: K and V per KV head, or MLA's compressed latent."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_bytes_per_element: float, context: int) -> float:
        """KV-cache bytes of one token at ``context`` tokens, over the whole model (no sharding):
        full-attention layers grow with the context, windowed layers stop at the window, linear
        layers keep a fixed state (its bytes spread over the context, priced at 2 bytes/element),
        and a sparse-attention indexer adds its fp8 keys."""
        per_layer = self.kv_elements_per_token_per_layer * kv_bytes_per_element
        full = self.num_full_attention_layers * per_layer
        window = self.num_window_layers * per_layer * min(context, self.sliding_window) / context
        state = self.num_linear_layers * self.linear_state_elements * 2.0 / context
        index = self.num_layers * (self.index_head_dim + 4.0) if self.index_topk else 0.0
        return full + window + state + index

    @property
    def attention_params(self) -> int:
        """Weights of one softmax-attention block (projections, sinks, indexer)."""
        h = self.hidden_size
        extra = (self.num_heads if self.attention_sinks else 0) + self.index_params_per_layer
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
            return q + kv_down + kv_up + out + extra
        q_heads = self.num_heads * (2 if self.attn_output_gate else 1)
        qkv = h * (q_heads + 2 * self.num_kv_heads) * self.head_dim
        return qkv + self.num_heads * self.head_dim * h + extra

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
        mixers = (
            self.num_attention_layers * self.attention_params
            + self.num_linear_layers * self.linear_layer_params
        )
        return mixers + ffn + embed

    @property
    def active_params(self) -> int:
        """Weights one token reads: routed experts counted ``experts_per_token`` times."""
        if not self.is_moe:
            return self.total_params
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        inactive = self.num_moe_layers * (self.num_experts - self.experts_per_token) * expert
        return self.total_params - inactive

    def summary(self) -> str:
        """Name, total and active parameters, in words (shown with every result)."""
        size = f"{self.total_params / 1e9:.1f}B parameters"
        if self.is_moe:
            size = f"{self.total_params / 1e9:.1f}B total / {self.active_params / 1e9:.1f}B active"
        return f"{self.name} ({size}{', ' + self.quantization if self.quantization else ''})"


def mxfp4_matrix_bytes(rows: int, k: int) -> int:
    """Bytes of an MXFP4 weight matrix of ``rows`` outputs over ``k`` inputs as the checkpoint
    stores it (``*_blocks`` and ``*_scales`` tensors): each row holds ``ceil(k / 32)`` blocks of
    32 4-bit values (16 bytes, the last block zero-padded) and one E8M0 scale byte per block."""
    blocks = -(-k // MXFP4_BLOCK)
    return rows * blocks * (MXFP4_BLOCK // 2 + 1)


def mxfp4_expert_bytes(hidden: int, width: int, bias: bool) -> float:
    """Bytes per routed-expert weight element of an MXFP4 checkpoint: the fused gate/up matrix
    (2 ``width`` x ``hidden``) and the down matrix (``hidden`` x ``width``) with their block
    padding and scales, and, where the architecture has them (gpt-oss), the bf16 biases the
    checkpoint stores beside each expert (2 ``width`` + ``hidden``), over ``3 hidden width``."""
    stored = mxfp4_matrix_bytes(2 * width, hidden) + mxfp4_matrix_bytes(hidden, width)
    if bias:
        stored += 2 * (2 * width + hidden)
    return stored / (3 * hidden * width)


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
    "linear_num_key_heads": 4096,
    "linear_num_value_heads": 4096,
    "linear_key_head_dim": 16_384,
    "linear_value_head_dim": 16_384,
    "linear_conv_kernel_dim": 64,
    "max_position_embeddings": 1 << 30,
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


# Architectures whose config.json this parser reads completely. Anything else is refused, naming
# the ``architectures`` key, rather than read as something it is not.
SUPPORTED_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "MixtralForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "DeepseekV32ForCausalLM",
        "GptOssForCausalLM",
        "Llama4ForCausalLM",
        "Llama4ForConditionalGeneration",
        "Qwen3NextForCausalLM",
        "KimiK25ForConditionalGeneration",
    }
)

# Keys that change the architecture in ways the performance model does not represent. A config
# holding one (with a value other than the harmless one, when given) is refused naming the key.
_UNSUPPORTED_KEYS: dict[str, object] = {
    "hybrid_override_pattern": None,  # Nemotron-H: Mamba / attention / MLP layer pattern
    "layers_block_type": None,  # Jamba / Granite-hybrid
    "attn_layer_period": None,
    "expert_layer_period": None,
    "ssm_cfg": None,
    "mamba_d_state": None,
    "linear_attn_config": None,  # Kimi-Linear
    "cross_attention_layers": None,  # Llama-3.2 Vision
    "is_encoder_decoder": False,
    "encoder_layers": None,
    "parallel_attn": False,
    "alibi": False,
    "sliding_window_pattern": None,  # Gemma-style pattern (read layer_types instead)
    "moe_layer_freq": 1,
    "decoder_sparse_step": 1,
    "num_experts_per_layer": None,
}

_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "linear_attention"}


def _refuse_unknown(cfg: dict[str, Any], f: str) -> None:
    archs = cfg.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise InvalidInputError(f"{f}.architectures", "must be a list of class names")
        unknown = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
        if unknown:
            raise InvalidInputError(
                f"{f}.architectures",
                f"{unknown[0]} is not a supported architecture (supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))})",
            )
    for key, harmless in _UNSUPPORTED_KEYS.items():
        if key in cfg and cfg[key] is not None and cfg[key] != harmless and cfg[key] != []:
            raise InvalidInputError(
                f"{f}.{key}",
                f"changes the architecture in a way the planner does not model ({cfg[key]!r})",
            )


#: ``ModelSpec.quantization`` of an FP8 checkpoint with block scales (``weight_block_size``).
FP8_BLOCK_SCALED = "FP8 block-scaled"


def fp8_block_experts(model: ModelSpec) -> bool:
    """Whether ``model``'s routed experts run as 128 x 128 block-scaled FP8 when it is served at
    fp8: its checkpoint is so quantized (``quantization_config.weight_block_size``), or it is a
    built-in whose published FP8 release is (models.yaml ``fp8_release: block-scaled``: the
    release is a different checkpoint from the config the entry holds, so this is the catalog's
    knowledge, not the config's). Engines pick their MoE kernels by it (engines.yaml
    ``moe_padded_rows``)."""
    if not model.is_moe:
        return False
    return (
        model.quantization == FP8_BLOCK_SCALED or model.name in default_models().fp8_block_releases
    )


def _quantization(cfg: dict[str, Any], f: str) -> tuple[float, float, str]:
    """(dense bytes/element, expert bytes/element, description) from ``quantization_config``;
    0.0 means "at the request's precision"."""
    q = cfg.get("quantization_config")
    if q is None:
        return 0.0, 0.0, ""
    if not isinstance(q, dict):
        raise InvalidInputError(f"{f}.quantization_config", "must be a mapping")
    method = str(q.get("quant_method", "")).lower()
    skipped = " ".join(str(m) for m in q.get("modules_to_not_convert") or q.get("ignore") or [])
    attention_kept = "self_attn" in skipped or "attn" in skipped
    if method == "mxfp4":
        # gpt-oss: experts in MXFP4, attention, router and embeddings kept in bf16
        return (2.0 if attention_kept else MXFP4_BYTES), MXFP4_BYTES, "MXFP4 experts"
    if method == "fp8":
        return FP8_BYTES, FP8_BYTES, FP8_BLOCK_SCALED if q.get("weight_block_size") else "FP8"
    if method in ("awq", "gptq"):
        fq = f"{f}.quantization_config"
        bits = optional(q, "bits", int, optional(q, "w_bit", int, 4, fq), fq)
        group = optional(q, "group_size", int, optional(q, "q_group_size", int, 128, fq), fq)
        if bits != 4:
            raise InvalidInputError(
                f"{f}.quantization_config.bits", f"only 4 is modelled, got {bits}"
            )
        # fp16 scale + 4-bit zero point per group (group_size -1: one per output channel)
        b = 0.5 + (2.5 / group if group > 0 else 0.0)
        return b, b, f"{method.upper()} int4"
    if method == "modelopt":
        algo = str(q.get("quant_algo", "")).upper()
        if algo == "NVFP4":
            return NVFP4_BYTES, NVFP4_BYTES, "NVFP4"
        if algo == "FP8":
            return FP8_BYTES, FP8_BYTES, "FP8"
        raise InvalidInputError(f"{f}.quantization_config.quant_algo", f"unknown {algo!r}")
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        if not isinstance(groups, dict) or not groups:
            raise InvalidInputError(f"{f}.quantization_config.config_groups", "is required")
        grp = next(iter(groups.values()))
        if not isinstance(grp, dict):
            raise InvalidInputError(f"{f}.quantization_config.config_groups", "must hold mappings")
        w = grp.get("weights") or {}
        fw = f"{f}.quantization_config.config_groups.weights"
        bits = optional(w, "num_bits", int, 8, fw)
        targets = " ".join(str(t) for t in grp.get("targets") or [])
        experts_only = attention_kept or "expert" in targets
        if bits == 4:
            group = optional(w, "group_size", int, 128, fw)
            b = 0.5 + ((1.0 if w.get("type") == "float" else 2.0) / group if group > 0 else 0.0)
            name = "NVFP4" if w.get("type") == "float" else f"int4 (group {group})"
        elif bits == 8:
            b, name = FP8_BYTES, "FP8" if w.get("type") == "float" else "int8"
        else:
            raise InvalidInputError(
                f"{f}.quantization_config.config_groups", f"{bits}-bit weights are not modelled"
            )
        if experts_only:  # attention and dense layers stay in bf16
            return 2.0, b, f"{name} experts"
        return b, b, name
    raise InvalidInputError(
        f"{f}.quantization_config.quant_method",
        f"{method or '(missing)'} is not modelled (mxfp4, fp8, awq, gptq, modelopt, "
        "compressed-tensors)",
    )


def _layer_kinds(cfg: dict[str, Any], layers: int, f: str) -> tuple[int, int, int]:
    """(window size, windowed layers, linear-attention layers)."""
    window = int(_first(cfg, ("sliding_window", "attention_chunk_size"), 0) or 0)
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise InvalidInputError(f"{f}.layer_types", f"must list one type per layer ({layers})")
        bad = [t for t in types if t not in _LAYER_TYPES]
        if bad:
            raise InvalidInputError(f"{f}.layer_types", f"unknown layer type {bad[0]!r}")
        windowed = sum(t in ("sliding_attention", "chunked_attention") for t in types)
        linear = sum(t == "linear_attention" for t in types)
        if windowed and window <= 0:
            raise InvalidInputError(f"{f}.sliding_window", "windowed layers need a window size")
        return (window if windowed else 0), windowed, linear
    interval = cfg.get("full_attention_interval")
    if interval:  # Qwen3-Next: every interval-th layer is full attention, the rest linear
        interval = int(interval)
        return 0, 0, layers - layers // interval
    if cfg.get("attention_chunk_size"):  # Llama-4: chunked local attention except NoPE layers
        no_rope = cfg.get("no_rope_layers")
        if isinstance(no_rope, list) and len(no_rope) == layers:
            chunked = sum(1 for v in no_rope if v)
        else:
            chunked = layers - layers // int(cfg.get("nope_layer_interval") or 4)
        return int(cfg["attention_chunk_size"]), chunked, 0
    if cfg.get("use_sliding_window") is False or not window:
        return 0, 0, 0
    if cfg.get("use_sliding_window"):  # Qwen2: layers from max_window_layers on use the window
        first = int(cfg.get("max_window_layers") or 0)
        return window, max(0, layers - first), 0
    return window, layers, 0  # Mistral: every layer


def model_from_hf_config(cfg: dict[str, Any], name: str, field_path: str = "model") -> ModelSpec:
    """Build a ``ModelSpec`` from a Hugging Face ``config.json`` dictionary (a pure function of
    the dict). Multimodal and wrapped configs are read from their ``text_config``; unsupported
    architectures and architecture-changing keys raise ``InvalidInputError`` naming the key."""
    if not isinstance(cfg, dict):
        raise InvalidInputError(field_path, "config.json must hold a JSON object")
    f = field_path
    _refuse_unknown(cfg, f)
    outer_quant = cfg.get("quantization_config")
    archs = cfg.get("architectures") or []
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM in text_config
        inner = cfg["text_config"]
        cfg = {**inner, "architectures": archs}
        if outer_quant is not None and inner.get("quantization_config") is None:
            cfg["quantization_config"] = outer_quant
        _refuse_unknown({k: v for k, v in cfg.items() if k != "architectures"}, f"{f}.text_config")
    check_config_numbers(cfg, f)
    hidden = require(cfg, "hidden_size", int, f)
    layers = require(cfg, "num_hidden_layers", int, f)
    heads = require(cfg, "num_attention_heads", int, f)
    kv_heads = optional(cfg, "num_key_value_heads", int, heads, f)
    vocab = require(cfg, "vocab_size", int, f)
    head_dim = optional(cfg, "head_dim", int, hidden // heads if heads else 0, f)
    inter = optional(cfg, "intermediate_size", int, 0, f)
    tie = bool(cfg.get("tie_word_embeddings", False))
    llama4 = any(a.startswith("Llama4") for a in archs) or cfg.get("model_type") == "llama4_text"
    n_experts = int(_first(cfg, ("n_routed_experts", "num_local_experts", "num_experts"), 0) or 0)
    top_k = int(
        _first(cfg, ("num_experts_per_tok", "num_experts_per_token", "experts_per_token"), 0) or 0
    )
    moe_inter = int(_first(cfg, ("moe_intermediate_size",), inter) or 0)
    shared = int(_first(cfg, ("n_shared_experts",), 0) or 0)
    if cfg.get("shared_expert_intermediate_size"):  # Qwen2-MoE: one shared expert of its own width
        shared = max(1, round(cfg["shared_expert_intermediate_size"] / max(moe_inter, 1)))
    dense_layers = int(_first(cfg, ("first_k_dense_replace",), 0) or 0)
    mlp_only = cfg.get("mlp_only_layers") or []
    if n_experts and isinstance(mlp_only, list):
        dense_layers += len(mlp_only)
    if llama4 and n_experts:
        # Llama-4: every MoE layer has one shared expert; with interleave_moe_layer_step k only
        # every k-th layer is MoE, the others a dense FFN of intermediate_size_mlp
        shared = 1
        step = int(cfg.get("interleave_moe_layer_step") or 1)
        moe_layers = cfg.get("moe_layers")
        n_moe = len(moe_layers) if isinstance(moe_layers, list) else layers // step
        dense_layers = layers - n_moe
        inter = optional(cfg, "intermediate_size_mlp", int, inter, f) if dense_layers else inter
        moe_inter = int(cfg.get("intermediate_size") or moe_inter)
    window, window_layers, linear_layers = _layer_kinds(cfg, layers, f)
    nk = nv = dk = dv = conv = 0
    if linear_layers:  # Gated DeltaNet (Qwen3-Next)
        nk = require(cfg, "linear_num_key_heads", int, f)
        nv = require(cfg, "linear_num_value_heads", int, f)
        dk = require(cfg, "linear_key_head_dim", int, f)
        dv = require(cfg, "linear_value_head_dim", int, f)
        conv = optional(cfg, "linear_conv_kernel_dim", int, 4, f)
    mla = cfg.get("kv_lora_rank") is not None
    index_topk = int(cfg.get("index_topk") or 0)
    index_dim = int(cfg.get("index_head_dim") or 0) if index_topk else 0
    index_params = n_idx = 0
    if index_topk:
        n_idx = require(cfg, "index_n_heads", int, f)
        q_src = int(cfg.get("q_lora_rank") or hidden)
        # indexer: query up-projection, one shared key projection, per-head weights
        index_params = (
            q_src * n_idx * index_dim + hidden * index_dim + 2 * index_dim + hidden * n_idx
        )
    dense_bytes, expert_bytes, quant = _quantization(cfg, f)
    gpt_oss = any(a.startswith("GptOss") for a in archs) or cfg.get("model_type") == "gpt_oss"
    if quant == "MXFP4 experts" and n_experts and hidden and moe_inter:
        expert_bytes = mxfp4_expert_bytes(hidden, moe_inter, bias=gpt_oss)
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
        sliding_window=window,
        num_window_layers=window_layers,
        attention_sinks=gpt_oss,
        attn_output_gate="Qwen3NextForCausalLM" in archs or cfg.get("model_type") == "qwen3_next",
        num_linear_layers=linear_layers,
        linear_num_key_heads=nk,
        linear_num_value_heads=nv,
        linear_key_head_dim=dk,
        linear_value_head_dim=dv,
        linear_conv_kernel_dim=conv,
        index_topk=index_topk,
        index_head_dim=index_dim,
        index_n_heads=n_idx,
        index_params_per_layer=index_params,
        dense_weight_bytes=dense_bytes,
        expert_weight_bytes=expert_bytes if n_experts else 0.0,
        quantization=quant,
        max_context=optional(cfg, "max_position_embeddings", int, 0, f),
    )
    validate_model(spec, f)
    return spec


def _require_positive(values: dict[str, int], field_path: str) -> None:
    for key, value in values.items():
        if value <= 0:
            raise InvalidInputError(f"{field_path}.{key}", f"must be positive, got {value}")


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
    _require_positive(positive, field_path)
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
    if spec.num_window_layers + spec.num_linear_layers > spec.num_layers:
        raise InvalidInputError(f"{field_path}.layer_types", "more special layers than layers")
    if spec.num_linear_layers:
        linear = (
            "linear_num_key_heads",
            "linear_num_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_conv_kernel_dim",
        )
        _require_positive({key: getattr(spec, key) for key in linear}, field_path)
        if spec.linear_num_value_heads % spec.linear_num_key_heads:
            raise InvalidInputError(
                f"{field_path}.linear_num_value_heads",
                f"must be a multiple of linear_num_key_heads ({spec.linear_num_key_heads})",
            )
    if spec.num_window_layers and spec.sliding_window <= 0:
        raise InvalidInputError(f"{field_path}.sliding_window", "must be positive")
    if spec.attention == "mla" and (spec.kv_lora_rank <= 0 or spec.qk_nope_head_dim <= 0):
        raise InvalidInputError(
            f"{field_path}.kv_lora_rank", "MLA needs kv_lora_rank and qk_nope_head_dim"
        )


class ModelCatalog(Catalog[ModelSpec]):
    """Built-in models plus custom ones; a path loads a Hugging Face config.json."""

    kind = "model"

    def __init__(self, extra: list[ModelSpec] | None = None) -> None:
        builtins = []
        releases = set()  # built-ins whose published FP8 release is block-scaled
        fp8_only: set[str] = set()
        for entry in builtin_entries("models.yaml"):
            f = f"models.yaml:{entry['name']}"
            spec = model_from_hf_config(entry["config"], entry["name"], f)
            context = entry.get("max_context", spec.max_context)
            if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
                raise InvalidInputError(f"{f}.max_context", "must be a positive token count")
            spec = replace(spec, aliases=tuple(entry.get("aliases", ())), max_context=context)
            builtins.append(spec)
            release = entry.get("fp8_release")
            if release not in (None, "block-scaled"):
                raise InvalidInputError(f"{f}.fp8_release", "must be block-scaled if given")
            if release:
                releases.add(spec.name)
            if entry.get("release_dtype") not in (None, "fp8"):
                raise InvalidInputError(f"{f}.release_dtype", "must be fp8 if given")
            if entry.get("release_dtype") == "fp8":
                fp8_only.add(spec.name)
        self.fp8_block_releases = frozenset(releases)
        # built-ins published in FP8 only (models.yaml ``release_dtype: fp8``)
        self.fp8_only_releases = frozenset(fp8_only)
        super().__init__(builtins + list(extra or []))

    def get(self, name: str, field_path: str = "model") -> ModelSpec:
        """A model by name or alias (never a file)."""
        return super().get(name, field_path)

    def load(self, name_or_path: str, field_path: str = "model") -> ModelSpec:
        """A model by name or alias, else from a config.json (or YAML) file or a model directory."""
        if self.find(name_or_path) is None and Path(name_or_path).is_dir():
            return self._from_file(name_or_path, field_path)
        return super().load(name_or_path, field_path)

    def _from_file(self, path: str, field_path: str) -> ModelSpec:
        name, cfg = read_model_file(path, field_path)
        return model_from_hf_config(cfg, name, field_path)


def checkpoint_dtype(model: str | ModelSpec, models: ModelCatalog) -> str:
    """The GEMM precision of the checkpoint ``model`` names or is (a spec, e.g. one loaded from
    a config.json): fp8 for an FP8 release (a name ending in ``-FP8``, a built-in published in
    FP8 only such as DeepSeek-V3, or a model whose config.json quantizes to FP8), else bf16.
    Unknown names: by the name alone."""
    if isinstance(model, str):
        if model.strip().lower().endswith("-fp8"):
            return "fp8"
        spec = models.find(model)
        if spec is None:
            return "bf16"
    else:
        spec = model
    if spec.name in models.fp8_only_releases or spec.quantization.startswith("FP8"):
        return "fp8"
    return "bf16"


def is_model_path(value: str) -> bool:
    """Whether a model argument names a file or a model directory rather than a catalog entry."""
    return is_file_name(value) or Path(value).is_dir()


def read_model_file(path: str, field_path: str = "model") -> tuple[str, dict[str, Any]]:
    """The name and config of a model file or model directory (one holding config.json).

    The name is the config.json's folder, else the file's stem. ``InvalidInputError`` on
    ``field_path`` when a directory has no config.json or the file is not a JSON object.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InvalidInputError(field_path, f"{p} is a directory without a config.json")
        p = p / "config.json"
    cfg = read_document(p, field_path)
    if not isinstance(cfg, dict):
        raise InvalidInputError(field_path, f"{path} must hold a JSON object")
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
    """A built-in model by name or alias, or a Hugging Face config.json (or YAML) file or a model
    directory holding a config.json."""
    return default_models().load(name_or_path, field_path)
