"""benchmarks/gpu_suite.sh without a GPU: its staging step and its refusal to run on an unstaged machine."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _suite(step: str, workdir: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "OUT": str(workdir / "out")}
    return subprocess.run(["bash", str(SUITE), step], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def test_stage_joins_parts_and_carries_the_earlier_rows(tmp_path):
    stage = tmp_path / ".stage"
    stage.mkdir()
    payload = os.urandom(3000)
    for index, start in enumerate(range(0, len(payload), 1024)):
        (stage / f"weights.pth.part{index:02d}").write_bytes(payload[start:start + 1024])
    rows = {"protocol": "gpu", "rows": [{"recipe": "dcgan", "budget_minutes": 6, "fid": 50.0}]}
    (stage / "time_to_fid.json").write_text(json.dumps(rows))
    home = tmp_path / "home"
    done = _suite("stage", tmp_path, home)
    assert done.returncode == 0, done.stderr
    assert (home / "stage" / "weights.pth").read_bytes() == payload
    assert json.loads((home / "stage" / "time_to_fid" / "time_to_fid.json").read_text()) == rows


def test_a_recipe_call_on_an_unstaged_machine_is_refused(tmp_path):
    done = _suite("dcgan", tmp_path, tmp_path / "home")
    assert done.returncode == 3
    assert "stage the data first" in done.stdout + done.stderr
