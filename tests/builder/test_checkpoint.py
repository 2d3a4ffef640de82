"""Checkpoint validation: safetensors headers, config, architecture, tokenizer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from kiln.builder import checkpoint
from kiln.builder.safetensors_header import read_header
from kiln.dev.testbed import checkpoint as checkpoints
from kiln.errors import InvalidInput, Unsupported


def _raw(path: Path, header: dict[str, object], data: bytes) -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_header_of_a_real_file_matches_what_was_saved(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": np.zeros((2, 3), np.float16), "b": np.ones(5, np.int64)}, str(path),
              metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert (header.tensors["a"].dtype, header.tensors["a"].shape) == ("F16", (2, 3))
    assert header.tensors["b"].end - header.tensors["b"].begin == 40
    assert header.data_bytes == 12 + 40


@pytest.mark.parametrize(("header", "data", "why"), [
    ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 4 bytes"),
    ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "cover 4 of 8"),
    ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
      "b": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]}}, b"\0" * 6, "overlaps"),
    ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}}, b"\0" * 8, "hole"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "outside"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ({"__metadata__": {"n": 1}}, b"", "__metadata__"),
])
def test_inconsistent_headers_are_refused(tmp_path: Path, header: dict[str, object],
                                          data: bytes, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        read_header(_raw(tmp_path / "x.safetensors", header, data))


def test_truncated_and_non_json_headers_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidInput, match="only 2 bytes"):
        read_header(short)
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(InvalidInput, match="does not fit"):
        read_header(big)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(InvalidInput, match="not JSON"):
        read_header(junk)


def test_a_real_tiny_checkpoint_passes(tmp_path: Path) -> None:
    ckpt = checkpoints.write(tmp_path / "c")
    found = checkpoint.inspect(ckpt, supported=checkpoint.PYTORCH_ARCHITECTURES,
                               backend="pytorch")
    assert found.architecture == "LlamaForCausalLM"
    assert found.tensor_count == len(checkpoints.tensors())
    assert found.tokenizer[0] == "tokenizer.json"
    assert "tokenizer_config.json" in found.tokenizer
    assert {p.name for p in found.files} >= {"config.json", "model.safetensors"}
    assert found.quantization is None


def test_missing_config_bad_architecture_and_missing_tokenizer(tmp_path: Path) -> None:
    ckpt = checkpoints.write(tmp_path / "c")
    supported = checkpoint.PYTORCH_ARCHITECTURES
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(Unsupported, match="BertModel") as e:
        checkpoint.inspect(ckpt, supported=supported, backend="pytorch")
    assert e.value.reason == "Unsupported"
    (ckpt / "config.json").write_text(json.dumps({**config, "hidden_size": "16"}))
    with pytest.raises(InvalidInput, match="hidden_size"):
        checkpoint.inspect(ckpt, supported=supported, backend="pytorch")
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(InvalidInput, match="no tokenizer"):
        checkpoint.inspect(ckpt, supported=supported, backend="pytorch")
    (ckpt / "config.json").unlink()
    with pytest.raises(InvalidInput, match=r"no config\.json"):
        checkpoint.inspect(ckpt, supported=supported, backend="pytorch")


def test_weights_index_must_agree_with_the_files(tmp_path: Path) -> None:
    ckpt = checkpoints.write(tmp_path / "c")
    index = {"weight_map": {"model.norm.weight": "model.safetensors"}}
    (ckpt / checkpoint.INDEX).write_text(json.dumps(index))
    checkpoint.inspect(ckpt, supported={"LlamaForCausalLM"}, backend="pytorch")
    index["weight_map"]["model.extra.weight"] = "model.safetensors"
    (ckpt / checkpoint.INDEX).write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="does not hold it"):
        checkpoint.inspect(ckpt, supported={"LlamaForCausalLM"}, backend="pytorch")
    index["weight_map"] = {"model.norm.weight": "model-00002-of-00002.safetensors"}
    (ckpt / checkpoint.INDEX).write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="missing"):
        checkpoint.inspect(ckpt, supported={"LlamaForCausalLM"}, backend="pytorch")


def test_only_pickled_weights_are_named_in_the_error(tmp_path: Path) -> None:
    ckpt = checkpoints.write(tmp_path / "c")
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match=r"pytorch_model\.bin: convert them to safetensors"):
        checkpoint.inspect(ckpt, supported={"LlamaForCausalLM"}, backend="pytorch")
