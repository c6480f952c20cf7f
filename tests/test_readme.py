"""The README is a short manual: its two commands first, one sentence and one command per task, links that
resolve; the rest lives in docs/."""

import re

from tests.conftest import ROOT

QUICK_START = "pip install -e . && accelerate launch train_unconditional.py --config configs/quickstart.yaml"
TESTS = 'pip install -e ".[dev]" && python -m pytest'


def test_the_readme_is_short_and_its_two_commands_come_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    assert commands[:2] == [QUICK_START, TESTS]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(TESTS)  # CI runs exactly it


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
