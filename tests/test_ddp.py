"""`fit` under torchrun with 2 CPU processes (gloo): both ranks end with identical weights; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from infantino.trainer.extractor import ExtractorConfig, build_extractor, extractor_id
    from infantino.trainer.fit import FitConfig, fit

    data, out, report = sys.argv[1:4]
    cfg = FitConfig(data=data, out=out, backbone="test_efficientnet", img_size=32, epochs=1, max_steps=2,
                    batch_size=8, tracking=False, progress=False, seed=7, real_face_guard=False)
    torch.manual_seed(cfg.seed)
    init = extractor_id(build_extractor(ExtractorConfig(backbone=cfg.backbone, img_size=cfg.img_size)))
    res = fit(cfg)
    with open(f"{report}.{res.rank}.json", "w") as f:
        json.dump({"rank": res.rank, "world": res.world_size, "init": init, "final": res.final_weights_id,
                   "steps": res.global_step, "extractor_id": res.extractor_id,
                   "files": sorted(os.listdir(out)) if res.rank == 0 else None}, f)
""")


def test_two_cpu_processes_train_in_lockstep(tmp_path, trainer_dataset):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    out, report = tmp_path / "out", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(trainer_dataset), str(out), str(report)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish: {e.stderr}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "report.0.json").read_text())
    r1 = json.loads((tmp_path / "report.1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["steps"] == r1["steps"] == 2
    assert r0["init"] == r1["init"]  # same start
    assert r0["final"] != r0["init"]  # they trained
    assert r0["final"] == r1["final"]  # and stayed identical: gradients were all-reduced
    # only rank 0 wrote the run's files; its saved extractor is the trained one
    assert {"extractor.pt", "last.pt", "head.infh", "head_state.npz"} <= set(r0["files"])
    assert r1["extractor_id"] is None and r0["extractor_id"] == r0["final"]
