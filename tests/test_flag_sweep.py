"""tools/flag_sweep.py: it finds the tests that set a flag, its patch still applies, and a reset flag that a
test sees is reported seen."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import flag_sweep  # noqa: E402


def test_every_flag_is_listed_with_the_tests_that_name_it():
    names = flag_sweep.flag_names()
    assert {"random_flip", "evaluate_num_reference", "guidance_scale", "sigma_rel", "ct_huber_c"} <= set(names)
    texts = flag_sweep.test_texts()
    assert "tests/test_flags.py::test_random_flip_mirrors_about_half_the_training_images_left_right" in \
        flag_sweep.tests_setting("random_flip", texts, limit=50)
    # a module constant that names the flag counts for the tests that use it
    assert "tests/test_training_scores.py::test_scores_while_training_equal_evaluate_fid_on_the_export" in \
        flag_sweep.tests_setting("evaluate_every", texts, limit=50)
    assert not flag_sweep.tests_setting("no_such_flag", texts, limit=50)
    # a flag named by a common word: the tests that pass it come before those that merely say "run"
    first = flag_sweep.tests_setting("run", texts, limit=2)
    assert all('"--run"' in texts[test] for test in first), first


def test_the_patch_applies_to_check_flags():
    assert (ROOT / "smallgen" / "arguments.py").read_text().count(flag_sweep.PATCHED[0]) == 1


def test_a_flag_reset_to_its_default_is_seen_by_its_test(tmp_path, capsys):
    output = tmp_path / "sweep.json"
    code = flag_sweep.main(["--only", "random_flip", "--output_json", str(output)])
    assert "seen     --random_flip" in capsys.readouterr().out and code == 0
    assert '"verdict": "seen"' in output.read_text()
    assert '"seen_by": "tests/test_flags.py::test_random_flip_mirrors_about_half_the_training_images_left_right"' \
        in output.read_text()
