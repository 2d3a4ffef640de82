"""The test bed's build caches are keyed by their inputs: Kueue's by ``testbed/kueue/``
alone, the other binaries' by the rest, so a Kueue bump rebuilds Kueue only (and a clean
clone finds both where an earlier run left them)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln.dev.testbed import binaries


def test_kueue_and_the_other_binaries_are_cached_apart(tmp_path: Path) -> None:
    src = tmp_path / "testbed"
    shutil.copytree(binaries.source_dir(), src)
    both = binaries.inputs_hash(src), binaries.inputs_hash(src / "kueue")
    moved = tmp_path / "elsewhere"  # another clone: same inputs, same keys
    shutil.copytree(src, moved)
    assert (binaries.inputs_hash(moved), binaries.inputs_hash(moved / "kueue")) == both
    with (src / "kueue" / "go.mod").open("a") as go_mod:
        go_mod.write("\n// another Kueue\n")
    assert binaries.inputs_hash(src) == both[0]
    assert binaries.inputs_hash(src / "kueue") != both[1]
    with (src / "kube" / "go.mod").open("a") as go_mod:
        go_mod.write("\n// another Kubernetes\n")
    assert binaries.inputs_hash(src) != both[0]
