"""docs/compatibility.md: generated from the catalogue, no drift, and says what it should."""

from __future__ import annotations

from pathlib import Path

from kiln import cli
from kiln.domain import catalogue
from kiln.gen import compatdocs

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "compatibility.md"


def test_committed_table_matches_the_catalogue(tmp_path: Path) -> None:
    """Drift: `kiln compatibility` must have been run after the last catalogue change."""
    out = tmp_path / "compatibility.md"
    assert cli.main(["compatibility", "--out", str(out)]) == 0
    assert out.read_text() == DOC.read_text(), \
        "docs/compatibility.md is stale: run `kiln compatibility`"


def test_every_gpu_and_every_reason_is_shown() -> None:
    text = compatdocs.render()
    for gpu in catalogue.GPUS:
        assert text.count(f"| `{gpu.name}` |") == 3, gpu.name  # GPUs, tensorrt, pytorch
        assert all(f"`{p}`" in text for p in gpu.products)
    for req in catalogue.REQUIREMENTS:
        assert req.why in text
    assert "INT8/INT4 quantization is not supported on SM>=100." in text
    assert "cnn_dailymail" in text


def test_cells_agree_with_supports() -> None:
    text = compatdocs.render()
    section = text.split("## Backend `tensorrt`", 1)[1].split("## Backend", 1)[0]
    b300 = next(line for line in section.splitlines() if line.startswith("| `B300` |"))
    cells = [c.strip() for c in b300.strip("|").split("|")]
    algos = [a for a in catalogue.QUANT_ALGOS if a != "none"]
    for algo, cell in zip(algos, cells[2:], strict=False):
        assert cell.startswith("yes") is catalogue.supports("B300", "tensorrt", algo).ok, algo


def test_the_readme_links_it() -> None:
    assert "docs/compatibility.md" in (ROOT / "README.md").read_text()
