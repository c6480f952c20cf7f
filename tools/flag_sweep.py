"""Which flags does a test see? Reset one flag to its default and run the tests that set it.

    python tools/flag_sweep.py                         # every flag (an hour or more on 2 cores)
    python tools/flag_sweep.py --only random_flip seed # some
    python tools/flag_sweep.py --list                  # each flag and the tests that set it (seconds)
    python tools/flag_sweep.py --write_claims          # also the table in docs/claims.md

For each flag of every argument class (training, each model type, evaluate_fid.py, reconstruct_ema.py,
the report), the tests that set it are found by name: test functions whose text names the flag, or names
a module constant that does. In a copy of the tree (as tools/mutations.py makes it), ``check_flags``, which
every argument class calls on construction, is patched to put that one flag back to its default whatever
was passed, and the tests run. A failing test has seen the flag ("seen"); all passing means that no test
can tell the flag from its default ("unseen": an unguarded claim); "no test" means no test sets it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import ROOT, copy_tree, run_tests  # noqa: E402

SWEPT = "SMALLGEN_SWEPT_FLAG"  # the environment variable naming the flag the patched check_flags resets
PATCHED = ("def check_flags(arguments) -> None:\n", '''def _reset_swept_flag(arguments) -> None:
    name = __import__("os").environ.get("SMALLGEN_SWEPT_FLAG")
    for item in dataclasses.fields(arguments):
        if item.name == name:
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            object.__setattr__(arguments, name, default)


def check_flags(arguments) -> None:
    _reset_swept_flag(arguments)
''')
CLAIMS_START, CLAIMS_END = "<!-- flag-sweep:start -->", "<!-- flag-sweep:end -->"


def argument_classes() -> list[type]:
    sys.path.insert(0, str(ROOT))
    from smallgen.config import ARGUMENT_CLASSES
    from smallgen.evaluation import EvaluationArguments
    from smallgen.objectives import argument_parts, evaluation_parts
    from smallgen.reconstruction import ReconstructionArguments
    from smallgen.report import ReportArguments

    return [*ARGUMENT_CLASSES, *argument_parts(), EvaluationArguments, *evaluation_parts(), ReconstructionArguments,
            ReportArguments]


def flag_names() -> list[str]:
    return list(dict.fromkeys(item.name for cls in argument_classes() for item in dataclasses.fields(cls)))


def test_texts() -> dict[str, str]:
    """{"tests/test_x.py::test_name": its text, with the module constants it names appended}."""
    texts = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == "test_flag_sweep.py":  # names flags as data, runs none
            continue
        source = path.read_text()
        tree = ast.parse(source)
        constants = {target.id: ast.get_source_segment(source, node) for node in tree.body
                     if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                text = ast.get_source_segment(source, node)
                named = [value for name, value in constants.items() if re.search(rf"\b{name}\b", text)]
                texts[f"tests/{path.name}::{node.name}"] = "\n".join([text, *named])
    return texts


def tests_setting(flag: str, texts: dict[str, str], limit: int) -> list[str]:
    """The tests that name ``flag``, those most likely to watch it first: those that set it (``--flag``,
    then ``flag=`` or a ``"flag":`` key; a flag named by a common word, --run or --step, is otherwise found in
    any test that says "run"), then its name in the test's name, then the shortest (a focused test names
    few things)."""
    pattern = re.compile(rf"(?<![\w.]){flag}\b")
    passed = re.compile(rf"--(no_)?{flag}\b")
    keyword = re.compile(rf"(?<![\w.]){flag}=(?!=)|[\"']{flag}[\"']\s*:")
    found = [test for test, text in texts.items() if pattern.search(text)]
    words = set(flag.split("_")) - {"num", "of", "to"}
    return sorted(found, key=lambda test: (not passed.search(texts[test]), not keyword.search(texts[test]),
                                           -len(words & set(test.split("::")[1].split("_"))), len(texts[test])))[:limit]


def sweep(tree: Path, flag: str, tests: list[str], timeout: int) -> tuple[str, str]:
    if not tests:
        return "no test", ""
    os.environ[SWEPT] = flag
    try:
        code, output = run_tests(tree, ("-rf", *tests), timeout)  # -rf: the summary names the failed test
    finally:
        del os.environ[SWEPT]
    if code == 1:
        failed = re.findall(r"FAILED (\S+)", output)
        return "seen", failed[0] if failed else "?"
    return ("unseen", "") if code == 0 else ("error", output[-300:])


def save_rows(output: Path, earlier: dict, rows: list[dict], names: list[str]) -> None:
    """This sweep's rows over an earlier sweep's (``--only`` sweeps again some flags), in flag order."""
    merged = {**earlier, **{row["flag"]: row for row in rows}}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([merged[name] for name in names if name in merged], indent=2) + "\n")


def claims_table(rows: list[dict]) -> str:
    lines = ["| flag | verdict | the test that saw it reset to its default |", "|---|---|---|"]
    for row in rows:
        seen_by = f"`{row['seen_by']}`" if row["verdict"] == "seen" else ""
        lines.append(f"| `--{row['flag']}` | {row['verdict']} | {seen_by} |")
    return "\n".join(lines)


def write_claims(rows: list[dict]) -> None:
    path = ROOT / "docs" / "claims.md"
    text = path.read_text()
    start, end = text.index(CLAIMS_START) + len(CLAIMS_START), text.index(CLAIMS_END)
    path.write_text(text[:start] + "\n" + claims_table(rows) + "\n" + text[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="These flags (names without --).")
    parser.add_argument("--list", action="store_true", help="Each flag and the tests that set it, then exit.")
    parser.add_argument("--max_tests", type=int, default=6, help="Tests run per flag (the first that set it).")
    parser.add_argument("--timeout", type=int, default=600, help="Seconds per flag.")
    parser.add_argument("--output_json", default="results/flag-sweep.json")
    parser.add_argument("--write_claims", action="store_true", help="Write the table into docs/claims.md.")
    args = parser.parse_args(argv)
    names = flag_names()
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown flag(s): {', '.join(sorted(unknown))}")
    texts = test_texts()
    chosen = {name: tests_setting(name, texts, args.max_tests) for name in names if not args.only or name in args.only}
    if args.list:
        for name, tests in chosen.items():
            print(f"--{name:32s} {', '.join(t.split('::')[1] for t in tests) or '(no test sets it)'}")
        return 0
    output = Path(args.output_json)
    earlier = {row["flag"]: row for row in json.loads(output.read_text())} if output.exists() and args.only else {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="smallgen-flag-sweep-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        arguments = tree / "smallgen" / "arguments.py"
        if arguments.read_text().count(PATCHED[0]) != 1:
            print("smallgen/arguments.py's check_flags has moved: update PATCHED in tools/flag_sweep.py")
            return 2
        arguments.write_text(arguments.read_text().replace(*PATCHED))
        for name, tests in chosen.items():
            start = time.perf_counter()
            verdict, detail = sweep(tree, name, tests, args.timeout)
            rows.append({"flag": name, "verdict": verdict, "seen_by": detail if verdict == "seen" else None,
                         "tests": tests})
            print(f"{verdict:8s} --{name:32s} {time.perf_counter() - start:6.1f}s  {detail}", flush=True)
            save_rows(output, earlier, rows, names)  # after each flag: a long sweep keeps what it found
    if args.write_claims:
        write_claims(json.loads(output.read_text()))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("seen", "unseen", "no test", "error")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0 if counts["seen"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
