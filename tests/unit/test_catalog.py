"""The catalogs: built-in models match their published sizes, names and aliases resolve, and users'
own Hugging Face config.json files and GPU files load (or fail naming the offending key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdplanner.planner.catalog import (
    DERIVED_HBM_SHARE,
    GpuCatalog,
    ModelCatalog,
    default_gpus,
    default_models,
    engine_names,
    gpu_from_entry,
    gpu_to_entry,
    load_engine,
    load_gpu,
    load_model,
    model_from_hf_config,
)
from pdplanner.planner.errors import InvalidInputError, UnknownEntryError
from pdplanner.planner.estimate import estimate
from pdplanner.planner.types import EstimateRequest, PhaseEstimate

# Published parameter counts (total, active), from the model cards, and the relative tolerance
# each is checked to (the rounding of the published figure).
PUBLISHED = {
    "llama-3.1-8b": (8.0e9, None, 0.02),
    "llama-3.1-70b": (70.6e9, None, 0.02),
    "llama-3.1-405b": (405.8e9, None, 0.02),
    "qwen3-32b": (32.8e9, None, 0.02),
    "mixtral-8x7b": (46.7e9, 12.9e9, 0.02),
    "qwen3-235b-a22b": (235e9, 22e9, 0.02),
    "deepseek-v3": (671e9, 37e9, 0.02),
    "deepseek-r1": (671e9, 37e9, 0.02),
    # DeepSeek-V3.2-Exp card: 671B, 37B activated (as V3); the indexer adds 0.85B, ~2% of active
    "deepseek-v3.2": (671e9, 37e9, 0.04),
    # Kimi-K2 / K2.5 card: "1T total, 32B activated" (both rounded)
    "kimi-k2.5": (1.0e12, 32e9, 0.03),
    # Llama-4 cards: Scout 109B total (with its 1B vision encoder), Maverick 400B; 17B active
    "llama-4-scout": (109e9, 17e9, 0.02),
    "llama-4-maverick": (400e9, 17e9, 0.02),
    # Qwen3-Next card: 80B total, 3B activated, which leaves out embedding and LM head; "3B" is
    # rounded (3.25B without them), hence 10% on the active count
    "qwen3-next-80b-a3b": (80e9, 3e9, 0.1),
    # gpt-oss card: 116.83B / 20.91B total; active 5.13B / 3.61B, which leaves out the input
    # embedding (a look-up); checked below against active - vocab x hidden
    "gpt-oss-120b": (116.83e9, 5.13e9, 0.01),
    "gpt-oss-20b": (20.91e9, 3.61e9, 0.01),
}
# models whose published active count leaves out the input embedding, or both embeddings
ACTIVE_WITHOUT_INPUT_EMBEDDING = {"gpt-oss-120b", "gpt-oss-20b"}
ACTIVE_WITHOUT_EMBEDDINGS = {"qwen3-next-80b-a3b"}


def test_every_built_in_model_has_a_published_size() -> None:
    assert set(default_models().names()) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_figures(name: str) -> None:
    m = load_model(name)
    total, active, rel = PUBLISHED[name]
    got_active = m.active_params
    if name in ACTIVE_WITHOUT_INPUT_EMBEDDING:
        got_active -= m.vocab_size * m.hidden_size
    if name in ACTIVE_WITHOUT_EMBEDDINGS:
        got_active -= 2 * m.vocab_size * m.hidden_size
    print(
        f"{name}: total {m.total_params / 1e9:.2f} B (published {total / 1e9:g}), "
        f"active {got_active / 1e9:.2f} B" + (f" (published {active / 1e9:g})" if active else "")
    )
    assert m.total_params == pytest.approx(total, rel=min(rel, 0.03))
    if active is None:
        assert m.active_params == m.total_params and not m.is_moe
    else:
        assert m.is_moe
        assert got_active == pytest.approx(active, rel=rel)


@pytest.mark.parametrize(
    ("name", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab"),
    [
        ("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256),
        ("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256),
        ("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256),
        ("qwen3-32b", 64, 5120, 64, 8, 25600, 151936),
    ],
)
def test_dense_architectures_match_the_reference_table(
    name, layers, hidden, heads, kv_heads, ffn, vocab
) -> None:
    m = load_model(name)
    got = (
        m.num_layers,
        m.hidden_size,
        m.num_heads,
        m.num_kv_heads,
        m.intermediate_size,
        m.vocab_size,
    )
    assert got == (layers, hidden, heads, kv_heads, ffn, vocab)
    assert m.head_dim == 128 and m.attention == "gqa"


def test_deepseek_has_mla_and_its_expert_layout() -> None:
    m = load_model("deepseek-r1")
    print(
        f"DeepSeek-R1: {m.num_experts} routed + {m.num_shared_experts} shared experts, top "
        f"{m.experts_per_token}, {m.num_dense_layers} dense layers, MLA latent {m.kv_lora_rank}"
        f"+{m.qk_rope_head_dim}, KV {m.kv_elements_per_token_per_layer} elements/token/layer"
    )
    assert m.attention == "mla"
    assert (m.num_experts, m.num_shared_experts, m.experts_per_token) == (256, 1, 8)
    assert (m.num_layers, m.num_dense_layers, m.num_moe_layers) == (61, 3, 58)
    assert (m.kv_lora_rank, m.q_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim) == (
        512,
        1536,
        128,
        64,
    )
    assert m.kv_elements_per_token_per_layer == 576
    assert m.intermediate_size == 18432 and m.moe_intermediate_size == 2048


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("meta-llama/Meta-Llama-3.1-70B", "llama-3.1-70b"),
        ("meta-llama/Llama-3.1-70B", "llama-3.1-70b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("META-LLAMA/LLAMA-3.1-405B", "llama-3.1-405b"),
        ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"),
        ("Qwen/Qwen3-32B", "qwen3-32b"),
        ("deepseek-ai/DeepSeek-R1", "deepseek-r1"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("llama_3.1_70b", "llama-3.1-70b"),
    ],
)
def test_model_aliases_resolve(alias: str, name: str) -> None:
    assert load_model(alias).name == name


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("h100_sxm", "h100-sxm"),
        ("H100", "h100-sxm"),
        ("H100 80GB HBM3", "h100-sxm"),
        ("h200", "h200-sxm"),
        ("gb200_nvl72", "gb200-nvl72"),
        ("B200", "b200"),
        ("a100", "a100-sxm-80g"),
        ("L40S", "l40s"),
    ],
)
def test_gpu_aliases_resolve(alias: str, name: str) -> None:
    assert load_gpu(alias).name == name


@pytest.mark.parametrize(
    ("alias", "name"),
    [("vLLM", "vllm"), ("SGLang", "sglang"), ("TensorRT-LLM", "trtllm"), ("trt-llm", "trtllm")],
)
def test_engine_aliases_resolve(alias: str, name: str) -> None:
    assert load_engine(alias).name == name


# Every built-in GPU's figures as its cited source prints them: dense TFLOP/s per precision
# (0: no tensor cores for it), datasheet memory (GB), memory bandwidth (TB/s), scale-up bandwidth
# per direction (GB/s), scale-up domain, and the capacity the device reports in MiB: a number
# where a cited device report (nvidia-smi) prints it, else how it is derived: "share" (datasheet
# GB read as GiB times the B200's reported share) or the GPU whose memory it shares.
GPU_SOURCES: dict[str, tuple[float, float, float, float, float, float, int, int | str]] = {
    "h100-sxm": (989, 1979, 0, 80, 3.35, 450, 8, 81559),
    "h200-sxm": (989, 1979, 0, 141, 4.8, 450, 8, 143771),
    "h800": (989, 1979, 0, 80, 3.35, 200, 8, "h100-sxm"),
    "h100-pcie": (756, 1513, 0, 80, 2.0, 300, 2, "share"),
    "h100-nvl": (835.5, 1670.5, 0, 94, 3.9, 300, 2, 95830),
    "h20": (148, 296, 0, 96, 4.0, 450, 8, "share"),
    "b200": (2250, 4500, 9000, 180, 8.0, 900, 8, 183359),
    "b300": (2250, 4500, 13500, 288, 8.0, 900, 8, "share"),
    "gb200-nvl72": (2500, 5000, 10000, 186, 8.0, 900, 72, "share"),
    "gb300-nvl72": (2500, 5000, 15000, 288, 8.0, 900, 72, "share"),
    "a100-sxm-80g": (312, 0, 0, 80, 2.039, 300, 8, 81920),
    "a100-sxm-40g": (312, 0, 0, 40, 1.555, 300, 8, 40960),
    "a100-pcie-80g": (312, 0, 0, 80, 1.935, 300, 2, "a100-sxm-80g"),
    "l40s": (362, 733, 0, 48, 0.864, 25, 1, 46068),
    "l4": (121, 242.5, 0, 24, 0.3, 25, 1, 23034),
    "rtx-pro-6000": (503.8, 1007.6, 2015.2, 96, 1.597, 50, 1, "share"),
    "mi300x": (1307.4, 2614.9, 0, 192, 5.3, 448, 8, "share"),
    "mi325x": (1307.4, 2614.9, 0, 256, 6.0, 448, 8, "share"),
    "mi355x": (2516.6, 5033.2, 10066.3, 288, 8.0, 537.6, 8, "share"),
}
# The B200's nvidia-smi total (NVIDIA/TensorRT-LLM#10278) over "180 GB" read as GiB.
B200_SHARE = 183359 / (180 * 1024)
HBM_REPORTED = ("h100-sxm", "h200-sxm", "h100-nvl", "b200", "a100-sxm-80g", "a100-sxm-40g")


def test_every_built_in_gpu_has_its_source_figures() -> None:
    assert set(default_gpus().names()) == set(GPU_SOURCES)
    for g in default_gpus().specs():
        assert g.source, f"{g.name} cites no source"
        assert g.hbm_basis in ("reported", "derived"), f"{g.name}: {g.hbm_reported!r}"


@pytest.mark.parametrize("name", sorted(GPU_SOURCES))
def test_gpu_figures_match_their_sources(name: str) -> None:
    g = load_gpu(name)
    bf16, fp8, fp4, hbm_gb, hbm_tb_s, link_gb_s, domain, device = GPU_SOURCES[name]
    got = (
        g.bf16_flops_per_s / 1e12,
        g.fp8_flops_per_s / 1e12,
        g.fp4_flops_per_s / 1e12,
        g.hbm_datasheet_bytes / 1e9,
        g.hbm_bytes_per_s / 1e12,
        g.nvlink_bytes_per_s / 1e9,
        g.nvlink_domain_size,
    )
    print(f"{name}: {got}, reports {g.hbm_bytes / 2**20:,.0f} MiB ({g.hbm_reported})")
    assert got == pytest.approx((bf16, fp8, fp4, hbm_gb, hbm_tb_s, link_gb_s, domain))
    if isinstance(device, int):
        assert g.hbm_basis == "reported"
        assert g.hbm_bytes == device * 2**20
        assert f"{device}" in g.hbm_reported and "#" in g.hbm_reported  # the report's thread
    elif device == "share":
        assert g.hbm_basis == "derived"
        assert g.hbm_bytes == round(hbm_gb * 1024 * B200_SHARE) * 2**20
    else:
        sibling = load_gpu(device)
        assert g.hbm_basis == "derived" and f"same memory as {device}" in g.hbm_reported
        assert sibling.hbm_basis == "reported" and g.hbm_bytes == sibling.hbm_bytes
    # the capacity a device reports is its datasheet figure give or take its rounding
    assert 0.95 < g.hbm_bytes / g.hbm_datasheet_bytes < 1.12


def test_the_derived_share_is_the_lowest_reported_by_an_hbm_gpu() -> None:
    """The rule for GPUs without a device report must not credit them with more memory than any
    reported HBM GPU has relative to its datasheet size."""
    shares = {}
    for name in HBM_REPORTED:
        g = load_gpu(name)
        shares[name] = g.hbm_bytes / 2**20 / (g.hbm_datasheet_bytes / 1e9 * 1024)
    print({k: round(v, 5) for k, v in shares.items()})
    assert min(shares.values()) == pytest.approx(B200_SHARE)
    assert pytest.approx(B200_SHARE) == DERIVED_HBM_SHARE


def test_a_gpu_file_without_a_device_figure_gets_the_derived_one() -> None:
    entry = gpu_to_entry(load_gpu("b300"))
    del entry["hbm_bytes"], entry["hbm_reported"]
    g = gpu_from_entry({**entry, "name": "my-b300"})
    assert g.hbm_bytes == round(288 * 1024 * B200_SHARE) * 2**20
    assert g.hbm_basis == "derived" and "293374 MiB" in g.hbm_reported


def test_only_gpus_with_measured_tables_are_calibrated() -> None:
    basis = {g.name: g.model_basis for g in default_gpus().specs()}
    print(basis)
    assert basis["h100-sxm"] == "calibrated"
    assert {n for n, b in basis.items() if b == "calibrated"} == {"h100-sxm", "h200-sxm"}
    assert basis["mi355x"] == "datasheet-scaled"


def test_engines_hold_their_differences() -> None:
    assert engine_names() == ["sglang", "trtllm", "vllm"]
    for name in engine_names():
        e = load_engine(name)
        print(
            f"{name}: overhead {e.step_overhead_ms} ms, chunk {e.default_chunk_tokens}, "
            f"max batch {e.max_batch}, decode attention {e.decode_attention_efficiency}"
        )
        assert 0 < e.step_overhead_ms < 5 and 0 < e.decode_attention_efficiency <= 1
        assert e.default_chunk_tokens > 0 and e.max_batch > 0


@pytest.mark.parametrize(
    ("kind", "lookup", "some_known"),
    [
        ("model", lambda n: load_model(n), "gpt-oss-120b"),
        ("GPU", lambda n: load_gpu(n), "a100-sxm-80g"),
        ("engine", lambda n: load_engine(n), "vllm"),
    ],
)
def test_unknown_names_list_the_known_ones(kind, lookup, some_known) -> None:
    with pytest.raises(UnknownEntryError) as exc:
        lookup("gpt-5-turbo")
    print(exc.value)
    assert some_known in exc.value.known and some_known in str(exc.value)
    assert f"unknown {kind} 'gpt-5-turbo'" in str(exc.value)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------------
# A user's config.json

LLAMA_32_1B = {  # meta-llama/Llama-3.2-1B config.json (architecture keys); published 1.24 B
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
}
DEEPSEEK_V2_LITE = {  # deepseek-ai/DeepSeek-V2-Lite config.json; published 15.7 B total
    "architectures": ["DeepseekV2ForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 102400,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "tie_word_embeddings": False,
}


def write_config(tmp_path: Path, folder: str, cfg: dict) -> Path:
    d = tmp_path / folder
    d.mkdir()
    p = d / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_a_hugging_face_config_json_loads_from_a_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "Llama-3.2-1B", LLAMA_32_1B)
    m = load_model(str(path))
    print(f"{path}: {m.name}, {m.total_params / 1e9:.3f} B parameters, head_dim {m.head_dim}")
    assert m.name == "Llama-3.2-1B"  # a config.json is named for its folder
    assert m.total_params == pytest.approx(1.24e9, rel=0.01)
    assert m.tie_word_embeddings and m.head_dim == 64 and m.num_kv_heads == 8
    models = ModelCatalog(extra=[m])  # a file joins a catalog explicitly; names never read one
    r = estimate(
        EstimateRequest(model=m.name, gpu="h100", isl=512, osl=64, phase="decode", batch=8),
        models,
    )
    assert isinstance(r, PhaseEstimate) and r.fits and r.step_ms > 0
    print(f"estimate on the file: decode step {r.step_ms:.2f} ms")


def test_a_mla_moe_config_json_loads_with_its_structure(tmp_path: Path) -> None:
    m = load_model(str(write_config(tmp_path, "DeepSeek-V2-Lite", DEEPSEEK_V2_LITE)))
    print(
        f"{m.name}: {m.total_params / 1e9:.2f} B total, {m.active_params / 1e9:.2f} B active, "
        f"{m.attention}, {m.num_experts}+{m.num_shared_experts} experts"
    )
    assert m.attention == "mla" and m.q_lora_rank == 0
    assert (m.num_experts, m.num_shared_experts, m.num_dense_layers) == (64, 2, 1)
    assert m.total_params == pytest.approx(15.7e9, rel=0.01)


def test_a_named_json_or_yaml_file_loads_under_its_stem(tmp_path: Path) -> None:
    p = tmp_path / "tiny-llama.json"
    p.write_text(json.dumps(LLAMA_32_1B))
    assert load_model(str(p)).name == "tiny-llama"
    y = tmp_path / "tiny.yaml"
    y.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in LLAMA_32_1B.items()))
    assert load_model(str(y)).total_params == load_model(str(p)).total_params


def test_a_multimodal_wrapper_reads_its_text_config() -> None:
    cfg = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "text_config": LLAMA_32_1B,
        "vision_config": {"hidden_size": 1408},
    }
    assert model_from_hf_config(cfg, "wrapped").hidden_size == 2048


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"hidden_size": None}, "model.hidden_size", "is required"),
        ({"num_hidden_layers": "many"}, "model.num_hidden_layers", "must be an integer"),
        ({"num_attention_heads": 0}, "model.num_attention_heads", "must be positive"),
        ({"num_key_value_heads": 5}, "model.num_key_value_heads", "must divide"),
        ({"vocab_size": 12.5}, "model.vocab_size", "must be an integer"),
        ({"intermediate_size": 0}, "model.intermediate_size", "must be positive"),
        ({"num_local_experts": 8, "num_experts_per_tok": 9}, "model.num_experts_per_tok", "1..8"),
        ({"kv_lora_rank": 512}, "model.kv_lora_rank", "MLA needs"),
    ],
)
def test_a_bad_config_names_the_key(tmp_path: Path, change: dict, field: str, says: str) -> None:
    cfg = {k: v for k, v in {**LLAMA_32_1B, **change}.items() if v is not None}
    path = write_config(tmp_path, "bad", cfg)
    with pytest.raises(InvalidInputError) as exc:
        load_model(str(path))
    print(f"{change} -> {exc.value}")
    assert exc.value.field == field and says in exc.value.reason
    assert "\n" not in str(exc.value)


def test_an_unreadable_or_malformed_config_names_the_model_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidInputError) as exc:
        load_model(str(broken))
    print(exc.value)
    assert exc.value.field == "model" and "not valid json" in exc.value.reason
    with pytest.raises(InvalidInputError) as exc:
        load_model(str(tmp_path / "missing" / "config.json"))
    print(exc.value)
    assert exc.value.field == "model" and "cannot read" in exc.value.reason
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(InvalidInputError) as exc:
        load_model(str(array))
    assert "JSON object" in exc.value.reason


def test_extra_models_join_a_catalog() -> None:
    spec = model_from_hf_config(LLAMA_32_1B, "llama-3.2-1b")
    cat = ModelCatalog(extra=[spec])
    assert cat.get("LLAMA-3.2-1B") is spec and "llama-3.2-1b" in cat.names()
    assert "llama-3.2-1b" not in default_models().names()


# ------------------------------------------------------------------------------------------------
# A custom GPU file

CUSTOM_GPU = """\
- name: my-accel
  aliases: [MY-ACCEL]
  flops_per_s: {bf16: 1307.0e12, fp8: 2615.0e12}
  hbm_bytes: 192.0e9
  hbm_bytes_per_s: 5.3e12
  nvlink_bytes_per_s: 448.0e9
  nvlink_domain_size: 8
  scaleout_bytes_per_s: 50.0e9
"""


def test_a_custom_gpu_loads_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "my-accel.yaml"
    path.write_text(CUSTOM_GPU)
    g = load_gpu(str(path))
    print(f"{path.name}: {g}")
    assert (
        g.name == "my-accel"
        and g.hbm_bytes == 192e9
        and g.supports("fp8")
        and not g.supports("fp4")
    )
    assert g.calibration == "h100-sxm"  # borrows the measured efficiency curves
    r = estimate(
        EstimateRequest(
            model="llama-3.1-70b", gpu=g.name, isl=1024, osl=128, phase="decode", batch=1
        ),
        gpus=GpuCatalog(extra=[g]),
    )
    h100 = estimate(
        EstimateRequest(
            model="llama-3.1-70b", gpu="h100-sxm", isl=1024, osl=128, phase="decode", batch=1
        )
    )
    print(
        f"70B decode b=1: my-accel {r.step_ms:.1f} ms (fits {r.fits}), h100 {h100.step_ms:.1f} ms "
        f"(fits {h100.fits})"
    )
    assert r.fits and not h100.fits  # 141 GB of bf16 weights fit in 192 GB, not in 80
    assert r.gpu_basis == "datasheet-scaled" and h100.gpu_basis == "calibrated"
    assert r.step_ms < h100.step_ms  # 5.3 vs 3.35 TB/s


def test_custom_gpus_join_a_catalog(tmp_path: Path) -> None:
    path = tmp_path / "my-accel.yaml"
    path.write_text(CUSTOM_GPU)
    cat = GpuCatalog(extra=[load_gpu(str(path))])
    assert cat.get("MY-ACCEL").name == "my-accel"
    assert "my-accel" not in default_gpus().names()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("  hbm_bytes: 192.0e9\n", ""), "gpu.hbm_bytes"),
        (("hbm_bytes_per_s: 5.3e12", "hbm_bytes_per_s: -1"), "gpu.hbm_bytes_per_s"),
        (("nvlink_domain_size: 8", "nvlink_domain_size: 8.5"), "gpu.nvlink_domain_size"),
        (("{bf16: 1307.0e12, fp8: 2615.0e12}", "{fp8: 2615.0e12}"), "gpu.flops_per_s.bf16"),
        (("fp8: 2615.0e12", "fp6: 2615.0e12"), "gpu.flops_per_s"),
        (("- name: my-accel", "- name: ''"), "gpu.name"),
    ],
)
def test_a_bad_gpu_file_names_the_key(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    path = tmp_path / "gpu.yaml"
    assert edit[0] in CUSTOM_GPU
    path.write_text(CUSTOM_GPU.replace(*edit))
    with pytest.raises(InvalidInputError) as exc:
        load_gpu(str(path))
    print(f"{edit} -> {exc.value}")
    assert exc.value.field == field


def test_a_gpu_file_with_two_gpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(CUSTOM_GPU + CUSTOM_GPU.replace("my-accel", "my-accel-2"))
    with pytest.raises(InvalidInputError, match="exactly one GPU"):
        load_gpu(str(path))


def test_padded_moe_rows_section_is_checked_and_names_known_gpus() -> None:
    """engines.yaml ``moe_padded_rows``: vLLM's names catalog GPUs only (a typo would silently
    leave that GPU on the routed-rows path), and a malformed section names its field."""
    from pdplanner.planner.catalog import default_gpus
    from pdplanner.planner.catalog.engines import _moe_padded_keys

    vllm = load_engine("vllm")
    assert vllm.moe_padded_align == 128 and vllm.moe_padded_below_tp == 8
    for name in vllm.moe_padded_gpus:
        assert default_gpus().get(name, "gpu").name == name
    assert load_engine("sglang").moe_padded_align == 0
    assert _moe_padded_keys(None, "x") == {}
    for bad, field in (
        ({"align": 0, "below_tp": 8, "gpus": []}, "x.align"),
        ({"align": 128, "below_tp": 0, "gpus": []}, "x.below_tp"),
        ({"align": 128, "below_tp": 8, "gpus": "h100-sxm"}, "x.gpus"),
        ({"below_tp": 8, "gpus": []}, "x"),
    ):
        with pytest.raises(InvalidInputError) as e:
            _moe_padded_keys(bad, "x")
        assert e.value.field.startswith(field), (bad, e.value.field)


def test_block_scaled_fp8_experts_come_from_the_checkpoint_or_the_catalogs_release() -> None:
    """DeepSeek-V3.2's checkpoint is block-scaled FP8; DeepSeek-V3/R1, Qwen3-235B and Qwen3-Next
    publish block-scaled FP8 releases (models.yaml ``fp8_release``); MXFP4, int4 and the others'
    FP8 (per-channel, per-tensor or none) are not block-scaled, and dense models have no experts."""
    from pdplanner.planner.catalog import default_models, fp8_block_experts

    got = {m.name for m in default_models().specs() if fp8_block_experts(m)}
    assert got == {
        "deepseek-r1",
        "deepseek-v3",
        "deepseek-v3.2",
        "qwen3-235b-a22b",
        "qwen3-next-80b-a3b",
    }
