"""Training across processes stays Lightning DDP: ``train.devices: 2`` on the CPU really runs two
ranks (gloo) and rank 0 writes a verified bundle. The same code path is what a multi-GPU or
``torchrun`` launch takes; this keeps it tested on a 2-core machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe_dict

# Runs `medlens` after wrapping Trainer.fit so each rank leaves a file saying who it was.
# Lightning re-executes this very command for rank 1 (its subprocess launcher), so the wrapper
# runs in both processes.
WRAPPER = """
import sys
from pathlib import Path

import lightning.pytorch as pl

_fit = pl.Trainer.fit


def fit(self, *a, **k):
    out = _fit(self, *a, **k)
    Path({marks!r}, f"rank{{self.global_rank}}_of{{self.world_size}}").touch()
    return out


pl.Trainer.fit = fit
from medlens.cli import main

sys.exit(main())
"""


@pytest.mark.slow
def test_two_process_cpu_ddp_training(tmp_path: Path):
    d = tiny_recipe_dict()
    d["train"].update({"devices": 2, "accelerator": "cpu", "epochs": 1})
    d["explain"] = {"max_images": 2, "faithfulness_images": 1, "n_bootstrap": 20}
    d["evaluate"]["n_bootstrap"] = 20
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(d))
    marks = tmp_path / "ranks"
    marks.mkdir()
    wrapper = tmp_path / "medlens_ddp.py"
    wrapper.write_text(WRAPPER.format(marks=str(marks)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(wrapper), "train", str(recipe), "--out", str(tmp_path / "runs")]
    proc = subprocess.run(
        [*cmd, "--no-track", "--no-export"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in marks.iterdir()) == ["rank0_of2", "rank1_of2"]

    from medlens.bundle import verify_bundle

    verify_bundle(tmp_path / "runs" / "tiny_cxr" / "bundle")
