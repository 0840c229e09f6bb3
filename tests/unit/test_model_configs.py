"""Newer architectures read right from their config.json, or refused naming the key.

The fixtures under ``configs/`` are written from the published config.json files (keys and values
of the Hugging Face repositories named in each test), harmless keys (rope scaling, token ids)
included, so the parser has to skip what does not change the architecture.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pdplanner.planner.catalog import load_model, model_from_hf_config
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.estimate import estimate
from pdplanner.planner.types import EstimateRequest, PhaseEstimate, Precision

CONFIGS = Path(__file__).parent / "configs"


def fixture(folder: str) -> dict:
    return json.loads((CONFIGS / folder / "config.json").read_text())


@pytest.mark.parametrize(
    ("folder", "builtin"),
    [
        ("gpt-oss-120b", "gpt-oss-120b"),  # openai/gpt-oss-120b
        ("Llama-4-Maverick-17B-128E-Instruct", "llama-4-maverick"),  # meta-llama/...
        ("DeepSeek-V3.2", "deepseek-v3.2"),  # deepseek-ai/DeepSeek-V3.2
        ("Qwen3-Next-80B-A3B-Instruct", "qwen3-next-80b-a3b"),  # Qwen/...
        ("Kimi-K2.5", "kimi-k2.5"),  # moonshotai/Kimi-K2.5
    ],
)
def test_a_model_directory_loads_like_its_built_in_entry(folder: str, builtin: str) -> None:
    """A model directory path (not only a config.json path) loads, named for the directory, and
    reads exactly like the catalog's entry for the model."""
    m = load_model(str(CONFIGS / folder))
    print(m.summary())
    assert m.name == folder
    b = load_model(builtin)
    assert replace(m, name=b.name) == b
    # the context a request may span: config.json's max_position_embeddings, as the catalog has it
    assert m.max_context == b.max_context > 0


def test_gpt_oss_windows_sinks_and_mxfp4() -> None:
    m = model_from_hf_config(fixture("gpt-oss-120b"), "gpt-oss-120b")
    assert (m.num_window_layers, m.sliding_window, m.num_full_attention_layers) == (18, 128, 18)
    assert m.attention_sinks
    # per token: 18 full layers x K,V x 8 heads x 64 x 2 bytes; a windowed layer stops at 128
    assert m.kv_bytes_per_token(2.0, 128) == 18 * 2 * 8 * 64 * 2 * 2
    assert m.kv_bytes_per_token(2.0, 4096) == pytest.approx(
        18 * 2048 + 18 * 2048 * 128 / 4096, rel=1e-12
    )
    # experts as MXFP4 (4 bits + an 8-bit scale per 32) with their bf16 biases, the rest bf16;
    # math at the GPU's dtype (the exact bytes: test_mixer_pricing.py)
    assert 0.5 + 1 / 32 < m.expert_weight_bytes < 0.5 + 1 / 32 + 0.001
    assert m.dense_weight_bytes == 2.0
    assert m.quantization == "MXFP4 experts"


def test_gpt_oss_runs_on_gpus_without_fp4_with_its_storage_bytes() -> None:
    """MXFP4 weights on an H100 (no fp4 tensor cores) run with bf16 math; the weights take the
    MXFP4 bytes, so the 117B model fits one 80 GB GPU."""
    r = estimate(
        EstimateRequest(
            model="gpt-oss-120b", gpu="h100-sxm", isl=1024, osl=128, phase="decode", batch=8
        )
    )
    assert isinstance(r, PhaseEstimate)
    print(f"gpt-oss-120b on one H100: {r.memory_gb_per_gpu:.1f} GB, fits {r.fits} ({r.reason})")
    assert r.fits and 60 < r.memory_gb_per_gpu < 80
    assert "116.8B total / 5.7B active" in r.model and "MXFP4" in r.model


def test_llama4_maverick_interleaves_dense_and_moe_layers() -> None:
    m = model_from_hf_config(fixture("Llama-4-Maverick-17B-128E-Instruct"), "maverick")
    print(f"{m.summary()}: {m.num_moe_layers} MoE + {m.num_dense_layers} dense layers")
    assert (m.num_moe_layers, m.num_dense_layers, m.num_shared_experts) == (24, 24, 1)
    assert (m.intermediate_size, m.moe_intermediate_size) == (16384, 8192)
    assert m.total_params == pytest.approx(400e9, rel=0.01)
    assert m.active_params == pytest.approx(17e9, rel=0.02)
    # chunked local attention on 3 of 4 layers: their KV stops at 8192 tokens
    assert (m.num_window_layers, m.sliding_window) == (36, 8192)
    per_layer = 2 * 8 * 128 * 2
    assert m.kv_bytes_per_token(2.0, 8192) == 48 * per_layer
    assert m.kv_bytes_per_token(2.0, 65536) == pytest.approx(
        12 * per_layer + 36 * per_layer / 8, rel=1e-12
    )


def test_qwen3_next_linear_layers_keep_a_fixed_state() -> None:
    m = model_from_hf_config(fixture("Qwen3-Next-80B-A3B-Instruct"), "qwen3-next")
    assert (m.num_linear_layers, m.num_full_attention_layers) == (36, 12)
    # Gated DeltaNet state: 32 value heads x 128 x 128, plus the 3-step convolution state over
    # q, k (16 heads x 128 each) and v (32 x 128)
    assert m.linear_state_elements == 32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128)
    full = 12 * 2 * 2 * 256 * 2  # 12 layers, K and V of 2 heads of 256, bf16
    assert m.kv_bytes_per_token(2.0, 1000) == pytest.approx(
        full + 36 * m.linear_state_elements * 2 / 1000, rel=1e-12
    )
    assert m.total_params == pytest.approx(80e9, rel=0.01)


def test_deepseek_v32_sparse_attention_caches_the_indexer_keys() -> None:
    m = model_from_hf_config(fixture("DeepSeek-V3.2"), "v3.2")
    assert (m.index_topk, m.index_head_dim) == (2048, 128)
    # latent 512 + 64 per layer at the KV dtype, plus the indexer's fp8 key and fp32 scale
    assert m.kv_bytes_per_token(1.0, 10_000) == 61 * (576 + 128 + 4)
    assert m.quantization == "FP8 block-scaled" and m.dense_weight_bytes == 1.0


def test_kimi_k25_is_read_from_its_text_config_with_int4_experts() -> None:
    m = model_from_hf_config(fixture("Kimi-K2.5"), "kimi")
    assert m.attention == "mla" and (m.num_experts, m.num_heads) == (384, 64)
    assert m.expert_weight_bytes == 0.5 + 2 / 32 and m.dense_weight_bytes == 2.0
    assert m.total_params == pytest.approx(1.03e12, rel=0.01)


def test_weight_bytes_follow_the_storage_format_not_the_math_dtype() -> None:
    """DeepSeek-V3.2's FP8 checkpoint takes the same memory whatever precision the math runs."""
    kwargs = dict(model="deepseek-v3.2", gpu="h200-sxm", isl=1024, osl=128, phase="decode")
    a = estimate(EstimateRequest(**kwargs, batch=1, parallelism=_tp(8)))
    b = estimate(EstimateRequest(**kwargs, batch=1, parallelism=_tp(8), precision=Precision("fp8")))
    print(
        f"V3.2 TP8 on H200: bf16 math {a.memory_gb_per_gpu:.2f} GB, fp8 {b.memory_gb_per_gpu:.2f}"
    )
    assert a.memory_gb_per_gpu == pytest.approx(b.memory_gb_per_gpu, rel=1e-9)


def _tp(n: int):
    from pdplanner.planner.types import Parallelism

    return Parallelism(tp=n)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"architectures": ["MambaForCausalLM"]}, "model.architectures", "not a supported"),
        ({"hybrid_override_pattern": "M-M*"}, "model.hybrid_override_pattern", "changes"),
        ({"decoder_sparse_step": 2}, "model.decoder_sparse_step", "changes"),
        ({"layer_types": ["full_attention"] * 35 + ["mamba"]}, "model.layer_types", "mamba"),
        ({"layer_types": ["full_attention"] * 3}, "model.layer_types", "one type per layer"),
        (
            {"quantization_config": {"quant_method": "bitsandbytes"}},
            "model.quantization_config.quant_method",
            "not modelled",
        ),
        (
            {"quantization_config": {"quant_method": "gptq", "bits": 3}},
            "model.quantization_config.bits",
            "only 4",
        ),
    ],
)
def test_unknown_architecture_keys_are_refused_by_name(change: dict, field: str, says: str) -> None:
    cfg = {**fixture("gpt-oss-120b"), **change}
    with pytest.raises(InvalidInputError) as exc:
        model_from_hf_config(cfg, "x")
    print(f"{change} -> {exc.value}")
    assert exc.value.field == field and says in exc.value.reason


def test_an_unknown_key_inside_a_wrapped_config_names_its_path() -> None:
    cfg = fixture("Kimi-K2.5")
    cfg["text_config"] = {**cfg["text_config"], "linear_attn_config": {"kda_layers": [1, 2]}}
    with pytest.raises(InvalidInputError) as exc:
        model_from_hf_config(cfg, "x")
    assert exc.value.field == "model.text_config.linear_attn_config"


def test_a_directory_without_a_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as exc:
        load_model(str(tmp_path))
    assert exc.value.field == "model" and "without a config.json" in exc.value.reason


def test_mistral_style_windows_cover_every_layer_unless_switched_off() -> None:
    base = {
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "sliding_window": 4096,
    }
    assert model_from_hf_config(base, "m").num_window_layers == 32
    qwen_off = {**base, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False}
    assert model_from_hf_config(qwen_off, "q").num_window_layers == 0
