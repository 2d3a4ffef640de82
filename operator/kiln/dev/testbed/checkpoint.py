"""A tiny, real Hugging Face checkpoint (Llama architecture): weights for the test bed,
the builder tests and the quickstart (no hub can be reached from them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 16, 2, 4, 2, 32
WORDS = ["<unk>", "<s>", "</s>", "hello", "world", "engine", "kiln", "gpu"]


def config() -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "vocab_size": len(WORDS), "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": False,
    }


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head = HIDDEN // HEADS

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float16)

    out = {"model.embed_tokens.weight": w(len(WORDS), HIDDEN),
           "model.norm.weight": np.ones(HIDDEN, np.float16),
           "lm_head.weight": w(len(WORDS), HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": w(HEADS * head, HIDDEN),
            p + "self_attn.k_proj.weight": w(KV_HEADS * head, HIDDEN),
            p + "self_attn.v_proj.weight": w(KV_HEADS * head, HIDDEN),
            p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * head),
            p + "mlp.gate_proj.weight": w(FFN, HIDDEN),
            p + "mlp.up_proj.weight": w(FFN, HIDDEN),
            p + "mlp.down_proj.weight": w(HIDDEN, FFN),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float16),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float16),
        }
    return out


def write(directory: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and a tokenizer into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config(), indent=2))
    save_file(tensors(seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128}))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1,
                                                                  "eos_token_id": 2}))
    return directory


def upload(s3: Any, directory: Path, bucket: str, prefix: str) -> str:
    """Upload a checkpoint directory; returns its ``s3://`` URI."""
    for path in sorted(directory.iterdir()):
        s3.upload_file(str(path), bucket, f"{prefix}{path.name}")
    return f"s3://{bucket}/{prefix}"
