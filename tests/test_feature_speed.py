"""benchmarks/feature_speed.py runs and measures what it says (tiny settings; its numbers are in
docs/benchmarks.md, not asserted here)."""

import json
import sys

from tests.conftest import ROOT


def test_feature_speed_times_both_extractors_on_the_same_images(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import feature_speed

    output = tmp_path / "speed.json"
    result = feature_speed.main(["--num_images", "3", "--rounds", "1", "--output_json", str(output)])
    assert result["num_images"] == 3 and result["torch_fidelity_img_per_s"] > 0 and result["ours_img_per_s"] > 0
    assert 0 < result["max_relative_difference"] < 1e-5 and result["conv_gflops"] > 0
    assert json.loads(output.read_text()) == result
