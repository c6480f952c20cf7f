"""benchmarks/one_call_speed.py runs and measures what it says (tiny settings; its numbers are in
docs/benchmarks.md, not asserted here)."""

import json
import sys

from tests.conftest import ROOT


def test_one_call_speed_compares_each_variant_with_float32(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import one_call_speed

    output = tmp_path / "speed.json"
    rows = one_call_speed.main(["--batch_sizes", "2", "3", "--repeats", "1", "--variants", "float32", "channels_last",
                                "bf16 autocast", "--output_json", str(output)])
    assert [(r["variant"], r["batch_size"]) for r in rows] == [
        ("float32", 2), ("float32", 3), ("channels_last", 2), ("channels_last", 3), ("bf16 autocast", 2),
        ("bf16 autocast", 3), ("DCGAN generator", 2), ("DCGAN generator", 3)]
    diffs = {(r["variant"], r["batch_size"]): r["max_abs_diff"] for r in rows}
    assert diffs["float32", 3] == 0 and diffs["channels_last", 3] < 1e-4  # a layout, the same arithmetic
    assert diffs["bf16 autocast", 3] > 1e-4  # 8 bits of mantissa do change the images
    assert rows[-1]["max_abs_diff"] is None  # the DCGAN: other images, its speed only
    assert all(r["images_per_second"] > 0 for r in rows) and json.loads(output.read_text())["rows"] == rows
