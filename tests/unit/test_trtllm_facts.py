"""The recorded TensorRT-LLM 1.2.x facts are well-formed, and ``check_command`` parses argv."""

from __future__ import annotations

import pytest

from kiln.trtllm import TRTLLM_VERSION, llm_api, refusals, triton
from kiln.trtllm.flags import (
    COMMANDS,
    CONVERT_CHECKPOINT_LLAMA,
    QUANTIZE,
    QUANTIZE_HAS_EXPORT_FORMAT,
    TRTLLM_BUILD,
    TRTLLM_SERVE,
    Command,
    check_command,
)


def test_version_is_the_1_2_line() -> None:
    assert TRTLLM_VERSION.startswith("1.2")


@pytest.mark.parametrize("table", COMMANDS, ids=lambda c: c.program)
def test_flag_tables_are_well_formed(table: Command) -> None:
    names = [f.name for f in table.flags]
    assert len(names) == len(set(names)), "duplicate flag"
    for flag in table.flags:
        assert flag.source, flag.name
        assert "/" in flag.source and "@" in flag.source, flag.name
        assert flag.name.startswith("-"), flag.name
        assert flag.choices is None or flag.choices, flag.name
        if flag.default is not None and flag.choices is not None:
            assert flag.default in flag.choices or flag.default.startswith("None"), flag.name


def test_other_tables_are_well_formed() -> None:
    options = [o.name for o in llm_api.OPTIONS]
    assert len(options) == len(set(options))
    assert all(o.source for o in llm_api.OPTIONS)
    for model in triton.MODELS:
        assert model.source
        params = [p.name for p in model.params]
        assert len(params) == len(set(params)), model.name
        assert all(p.source for p in model.params), model.name
        for kind in (model.inputs, model.outputs):
            tensors = [t.name for t in kind]
            assert len(tensors) == len(set(tensors)), model.name
        declared = {t.name for t in (*model.inputs, *model.outputs)}
        assert set(model.initialize_reads) <= declared, model.name
    ids = [r.id for r in refusals.RULES]
    assert len(ids) == len(set(ids))
    assert all(r.source and r.effect for r in refusals.RULES)


def test_check_command_accepts_good_argv() -> None:
    check_command(["trtllm-build", "--checkpoint_dir", "/w/ckpt", "--output_dir=/w/engine",
                   "--max_batch_size", "64", "--gemm_plugin", "auto", "--kv_cache_type",
                   "paged", "--use_fp8_context_fmha=disable", "--lora_dir", "/a", "/b",
                   "--weight_streaming", "--workers", "2"], TRTLLM_BUILD)
    check_command(["python3", "/app/examples/models/core/llama/convert_checkpoint.py",
                   "--model_dir", "/w", "--use_weight_only", "--weight_only_precision",
                   "--tp_size", "2"], CONVERT_CHECKPOINT_LLAMA)
    check_command(["trtllm-serve", "/engine", "--host", "0.0.0.0", "--port=8000",
                   "--backend", "trt", "--tp_size", "2", "--trust_remote_code"], TRTLLM_SERVE)


def test_check_command_rejects_unknown_flag() -> None:
    with pytest.raises(ValueError, match="--export_format"):
        check_command(["--model_dir", "/w", "--export_format", "hf"], QUANTIZE)


def test_check_command_rejects_bad_choice() -> None:
    with pytest.raises(ValueError, match="--qformat"):
        check_command(["--qformat", "int8"], QUANTIZE)


def test_check_command_rejects_wrong_nargs() -> None:
    with pytest.raises(ValueError, match="--fast_build"):
        check_command(["--fast_build=true"], TRTLLM_BUILD)
    with pytest.raises(ValueError, match="--output_dir"):
        check_command(["--output_dir", "--workers", "2"], TRTLLM_BUILD)


def test_check_command_rejects_non_int() -> None:
    with pytest.raises(ValueError, match="--max_batch_size"):
        check_command(["--max_batch_size", "lots"], TRTLLM_BUILD)


def test_check_command_positionals_only_where_the_table_has_them() -> None:
    with pytest.raises(ValueError, match="positional"):
        check_command(["trtllm-build", "/w/ckpt"], TRTLLM_BUILD)
    with pytest.raises(ValueError, match="positional"):
        check_command(["trtllm-serve", "/a", "/b"], TRTLLM_SERVE)


@pytest.mark.parametrize(("argv", "ok"), [
    (["--strongly_typed"], False),             # removed in 0.11: argparse rejects it
    (["--streamingllm=disable"], True),        # a known flag ...
    (["--streamingllm=enable"], True),         # ... argparse takes it; build_model asserts
    (["--lora_target_modules=attn_q"], True),  # nargs '+': one value through '='
    (["--lora_target_modules", "attn_q", "attn_k"], True),
])
def test_field_review_c5_flags(argv: list[str], ok: bool) -> None:
    if ok:
        check_command(argv, TRTLLM_BUILD)
    else:
        with pytest.raises(ValueError, match=argv[0].partition("=")[0]):
            check_command(argv, TRTLLM_BUILD)


def test_field_review_c5_flag_shapes() -> None:
    assert TRTLLM_BUILD.flag("--strongly_typed") is None
    streaming = TRTLLM_BUILD.flag("--streamingllm")
    assert streaming is not None and "asserts" in streaming.note
    lora = TRTLLM_BUILD.flag("--lora_target_modules")
    assert lora is not None and lora.nargs == "+"


def test_calibration_directory_is_read_as_a_local_dataset() -> None:
    from kiln.builder.commands import CALIBRATION_DIR
    from kiln.trtllm import flags

    patterns = [p.strip("*") for form, _ in flags.CALIB_DATASET_FORMS[:-1]
                for p in form.split("|")]
    assert not any(p in CALIBRATION_DIR for p in patterns), "matched before the directory rule"
    assert flags.QUANTIZE.flag("--calib_dataset") is not None
    assert flags.QUANTIZE_HF_TO_HF_IGNORES_DATASET
    assert flags.QUANTIZE_WITH_MODELOPT.flag("--dataset") is not None


def test_hf_export_scripts_take_what_kiln_passes() -> None:
    from kiln.trtllm import flags

    hf = flags.QUANTIZE_HF_TO_HF.flag("--kv_cache_qformat")
    assert hf is not None and hf.default == "fp8" and hf.choices == ("fp8", "nvfp4", "none")
    fmt = flags.QUANTIZE_WITH_MODELOPT.flag("--export_fmt")
    assert fmt is not None and fmt.choices == ("tensorrt_llm", "hf")
    assert flags.HF_EXPORT_SCRIPTS[0] is flags.HF_PTQ, "ModelOpt's documented export first"
    assert flags.HF_EXPORT_SCRIPTS[1:] == (flags.QUANTIZE_HF_TO_HF, flags.QUANTIZE_WITH_MODELOPT)
    kv = flags.HF_PTQ.flag("--kv_cache_qformat")
    assert kv is not None and kv.default == "fp8" and "none" in (kv.choices or ())
    export = flags.HF_PTQ.flag("--export_fmt")
    assert export is not None and export.choices == ("tensorrt_llm", "hf")
    assert flags.HF_PTQ_DIR == "llm_ptq" and flags.HF_PTQ.program == "hf_ptq.py"


def test_quantize_has_no_export_format() -> None:
    assert not QUANTIZE_HAS_EXPORT_FORMAT
    assert QUANTIZE.flag("--export_format") is None


def test_fp8_and_paged_context_fmha_default_on() -> None:
    for name in ("--use_fp8_context_fmha", "--use_paged_context_fmha"):
        flag = TRTLLM_BUILD.flag(name)
        assert flag is not None and flag.default == "enable"
        assert refusals.DEFAULTS[name.removeprefix("--")] == "enable"


@pytest.mark.parametrize(("algo", "kv", "sm", "refused"), [
    ("int4_awq", "none", 100, True), ("w4a8_awq", "none", 103, True),
    ("int8_sq", "none", 110, True), ("none", "int8", 100, True),
    ("int8_wo", "none", 120, False), ("fp8", "fp8", 100, False),
    ("nvfp4", "none", 90, False), ("int4_wo", "none", 90, False),
])
def test_refusals_by_sm(algo: refusals.KilnAlgo, kv: refusals.KilnKv, sm: int,
                        refused: bool) -> None:
    assert bool(refusals.refusals(algo, kv, sm)) is refused


def test_preprocessing_reads_tensors_kiln_must_declare() -> None:
    assert "EMBEDDING_BIAS_WORDS" in triton.PREPROCESSING.initialize_reads
    required = {p.name for p in triton.PREPROCESSING.params if p.required}
    assert {"tokenizer_dir", "multimodal_model_path"} <= required
    assert "seed" in {t.name for t in triton.TENSORRT_LLM.inputs}
    assert "random_seed" not in {t.name for t in triton.TENSORRT_LLM.inputs}
