"""Hugging Face checkpoints: what is supported, and whether a directory holds a usable one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.builder.safetensors_header import Header, read_header
from kiln.errors import InvalidInput, Unsupported

TENSORRT_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
}
"""Architectures the engine path builds, and the example directory (under
``examples/models/core/``) whose ``convert_checkpoint.py`` converts them."""

PYTORCH_ARCHITECTURES = frozenset({
    *TENSORRT_FAMILIES,
    "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
    "Gemma3ForCausalLM", "Phi3ForCausalLM", "DeepseekV3ForCausalLM",
})
"""Architectures TensorRT-LLM 1.2's PyTorch backend serves from a Hugging Face checkpoint."""

REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
TOKENIZER_FORMS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
                   ("vocab.txt",))
"""Any one of these sets of files is a tokenizer."""
INDEX = "model.safetensors.index.json"
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf", ".onnx")
"""Weights in other formats: not needed next to safetensors, so not carried over."""


@dataclass
class Checkpoint:
    """A validated Hugging Face checkpoint directory."""

    directory: Path
    config: dict[str, Any]
    architecture: str
    weights: list[Header]
    tokenizer: list[str]
    quantization: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    """Top-level files a prepared copy keeps (alternative weight formats left out)."""

    @property
    def tensor_count(self) -> int:
        return sum(len(h.tensors) for h in self.weights)

    @property
    def weight_bytes(self) -> int:
        return sum(h.path.stat().st_size for h in self.weights)


def _json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"{what} {path.name} cannot be read as JSON: {e}") from None


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json``, checked to be a JSON object."""
    path = directory / "config.json"
    if not path.is_file():
        raise InvalidInput("the checkpoint has no config.json: point the source at a Hugging "
                           "Face checkpoint directory (config.json, *.safetensors, tokenizer)")
    config = _json_file(path, "model config")
    if not isinstance(config, dict):
        raise InvalidInput("config.json is not a JSON object")
    return config


def architecture(config: dict[str, Any], supported: frozenset[str] | set[str] | dict[str, str],
                 backend: str) -> str:
    """The first of ``config["architectures"]``, which must be in ``supported``."""
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidInput("config.json has no \"architectures\" list naming the model class")
    name = str(names[0])
    if name not in supported:
        raise Unsupported(
            f"architecture {name} is not supported by the {backend} backend; supported: "
            + ", ".join(sorted(supported)))
    for key in REQUIRED_CONFIG:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidInput(f"config.json: {key} must be a positive integer, got {value!r}")
    return name


def _weights(directory: Path) -> list[Header]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in directory.iterdir()
                        if p.suffix in OTHER_WEIGHT_SUFFIXES)
        hint = f" (found {', '.join(others[:3])}: convert them to safetensors)" if others else ""
        raise InvalidInput(f"the checkpoint has no *.safetensors weights{hint}")
    headers = [read_header(p) for p in files]
    index_path = directory / INDEX
    if index_path.is_file():
        index = _json_file(index_path, "weights index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidInput(f"{INDEX} has no weight_map")
        by_name = {h.path.name: h for h in headers}
        for tensor, file in weight_map.items():
            header = by_name.get(file)
            if header is None:
                raise InvalidInput(f"{INDEX} puts {tensor} in {file}, which is missing")
            if tensor not in header.tensors:
                raise InvalidInput(f"{INDEX} puts {tensor} in {file}, which does not hold it")
    if not any(h.tensors for h in headers):
        raise InvalidInput("the checkpoint's safetensors files hold no tensors")
    return headers


def _tokenizer(directory: Path) -> list[str]:
    for form in TOKENIZER_FORMS:
        if all((directory / name).is_file() for name in form):
            if form == ("tokenizer.json",):
                _json_file(directory / "tokenizer.json", "tokenizer")
            extra = [n for n in ("tokenizer_config.json", "special_tokens_map.json")
                     if (directory / n).is_file()]
            return [*form, *extra]
    raise InvalidInput("the checkpoint has no tokenizer: expected tokenizer.json, "
                       "tokenizer.model, vocab.json with merges.txt, or vocab.txt")


def quantization(directory: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """How the checkpoint is already quantized (``quantization_config`` or
    ``hf_quant_config.json``), if it is."""
    found = config.get("quantization_config")
    if isinstance(found, dict):
        return found
    path = directory / "hf_quant_config.json"
    if path.is_file():
        data = _json_file(path, "quantization config")
        if isinstance(data, dict):
            return dict(data.get("quantization") or data)
    return None


def inspect(directory: Path, *, supported: frozenset[str] | set[str] | dict[str, str],
            backend: str) -> Checkpoint:
    """Validate a Hugging Face checkpoint directory: config, architecture, weights, tokenizer.

    Raises :class:`InvalidInput` for a malformed checkpoint and :class:`Unsupported` for an
    architecture outside ``supported``.
    """
    config = read_config(directory)
    name = architecture(config, supported, backend)
    weights = _weights(directory)
    tokenizer = _tokenizer(directory)
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix not in OTHER_WEIGHT_SUFFIXES)
    return Checkpoint(directory, config, name, weights, tokenizer,
                      quantization(directory, config), files)
