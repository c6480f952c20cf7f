"""The GPU protocol in one 15-minute loan of the device tool: the rows that matter most come back
from one window, machine start and staging included (plan and minute-by-minute estimate:
docs/benchmarks.md, "GPU protocol in one window").

    python benchmarks/gpu_suite.py pack      # here, once: .stage/ holds the wheels and the bundle in parts
    python benchmarks/gpu_suite.py plan      # the device calls, back to back, each with what it carries
    python benchmarks/gpu_suite.py call 1    # on the device: install; throughput, fp32 and bf16 + compile
    python benchmarks/gpu_suite.py call 2    # ... each call appends its part of the bundle
    python benchmarks/gpu_suite.py call N    # the last: unpack, check; the quick start trained and scored
    python benchmarks/gpu_suite.py pack --table seeds32   # instead: seed 002's seven families at 32 px (#43),
                                             # from the last part's call on, then in the plan's extra calls

The bundle (CIFAR-10's train parquet, the FID Inception weights, their sha256) is one tar split into
parts sized so that each call's carry plus the working tree stays under the 64 MiB a call takes; the
first part is smaller, as the wheels travel with it. Everything a call measures is written under
$OUT as it goes. ``SUITE_SIZES`` (JSON) shrinks the protocol for the CPU dry run that tests every
step (tests/test_gpu_suite.py), so a GPU call cannot be the first to run a line of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from smallgen.inception import CONVERTED_FILE as WEIGHTS_NAME  # noqa: E402  (the file evaluate_fid.py looks for)
from smallgen.inception import default_cache_dir, sha256_of  # noqa: E402

# What the calls carry, ignored by git (.gitignore); SUITE_STAGE moves it for the dry run.
STAGE_HERE = Path(os.environ.get("SUITE_STAGE", ROOT / ".stage"))
CALL_LIMIT = 64 * 2**20  # bytes one device call carries: the working tree and its carry together
MARGIN = 2 * 2**20  # for files that change between packing and the calls
SEEDS_EXTRA_CALLS = 2  # calls after the last part that carry nothing and go on with the seeds32 table
WHEELS = ["diffusers", "datasets", "torch-fidelity", "dill", "multiprocess", "xxhash"]  # what the machine lacks
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "plain_text" / "train-00000-of-00001.parquet"


@dataclass
class Sizes:
    """The protocol's sizes (the defaults are the GPU window's; the CPU dry run passes tiny ones)."""

    budget_minutes: float = 4.0
    num_samples: int = 10000
    throughput_flags: list[str] = field(default_factory=lambda: [
        "--model", "configs/models/unet-ddpm-cifar10.json", "--batch_size", "128", "--steps", "40", "--warmup", "15"])
    speed_flags: list[str] = field(default_factory=lambda: [
        "--mixed_precision", "bf16", "--channels_last", "--allow_tf32", "--torch_compile"])
    time_to_fid_flags: list[str] = field(default_factory=lambda: ["--samplers", "edm-dpmsolver"])
    data_row_deadline_minutes: float = 7.5  # the data row only if the call has run less than this
    seeds_recipes: list[str] | None = None  # the seeds32 table's families (default: time_to_fid's gpu32 plan)
    seeds_budget_minutes: float | None = None  # each family's minutes (default: the gpu32 plan's)
    seeds_flags: list[str] = field(default_factory=list)  # more time_to_fid.py flags for the seeds32 table
    seeds_deadline_minutes: float = 6.5  # a seeds32 call starts no family after this (one: ~2 minutes)


def sizes() -> Sizes:
    return Sizes(**json.loads(os.environ.get("SUITE_SIZES", "{}")))


def remote_stage() -> Path:
    return Path(os.environ["HOME"]) / "stage"


def out_dir() -> Path:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------- here: packing


def working_tree_bytes() -> int:
    """What travels besides the carry: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def pack(data: Path, weights: Path, wheels: bool, table: str = "quickstart") -> dict:
    """.stage/whl (the missing wheels), .stage/part00.. (the bundle) and .stage/plan.json."""
    for path, what in ((data, "CIFAR-10 train parquet"), (weights, "FID Inception weights (run evaluate_fid.py once)")):
        if not path.is_file():
            sys.exit(f"missing {what}: {path}")
    shutil.rmtree(STAGE_HERE, ignore_errors=True)
    (STAGE_HERE / "whl").mkdir(parents=True)
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(STAGE_HERE / "whl"),
                        *WHEELS], check=True)
    bundle = STAGE_HERE / "bundle.tar"
    sums = {"train.parquet": sha256_of(data), WEIGHTS_NAME: sha256_of(weights)}
    with tarfile.open(bundle, "w") as tar:
        tar.add(data, "train.parquet")
        tar.add(weights, WEIGHTS_NAME)
    tree = working_tree_bytes()
    wheel_bytes = sum(p.stat().st_size for p in (STAGE_HERE / "whl").iterdir())
    capacities = [CALL_LIMIT - MARGIN - tree - wheel_bytes, CALL_LIMIT - MARGIN - tree]
    parts = split(bundle, capacities)
    bundle.unlink()
    plan = {"parts": [p.name for p in parts], "sha256": sums, "tree_bytes": tree, "wheel_bytes": wheel_bytes,
            "table": table}
    (STAGE_HERE / "plan.json").write_text(json.dumps(plan, indent=2))
    return plan


def split(path: Path, capacities: list[int]) -> list[Path]:
    """``path`` in parts: the first of capacities[0] bytes, the others of capacities[1]."""
    if min(capacities) <= 0:
        sys.exit(f"the working tree leaves no room to carry anything ({capacities}); shrink it")
    parts = []
    with open(path, "rb") as source:
        while block := source.read(capacities[0] if not parts else capacities[1]):
            parts.append(path.parent / f"part{len(parts):02d}")
            parts[-1].write_bytes(block)
    return parts


def calls(plan: dict) -> list[dict]:
    """The device calls: command, carry and what each does."""
    last, seeds = len(plan["parts"]), plan.get("table") == "seeds32"
    listed = []
    for number, part in enumerate(plan["parts"], start=1):
        carry = [f".stage/{part}"] + ([".stage/whl", ".stage/plan.json"] if number == 1 else [])
        does = ["install the wheels"] + ([] if seeds else ["throughput: our loop vs diffusers' step, fp32 and bf16 + compile"])
        does = does if number == 1 else []
        if number == last:
            does.append("unpack and check; " + ("the seeds' families, one by one, while the call has time" if seeds
                                                else "the quick start trained and sampled, FID; the data row"))
        listed.append({"command": f"python benchmarks/gpu_suite.py call {number}", "carry": carry,
                       "does": "; ".join(does) or "stage its part"})
    for number in range(last + 1, last + 1 + (SEEDS_EXTRA_CALLS if seeds else 0)):
        listed.append({"command": f"python benchmarks/gpu_suite.py call {number}", "carry": [],
                       "does": "the seeds' families left, while the call has time"})
    return listed


# ----------------------------------------------------------------------------- there: the calls


def call(number: int) -> None:
    started = time.perf_counter()
    stage, out = remote_stage(), out_dir()
    stage.mkdir(parents=True, exist_ok=True)
    if number == 1:
        shutil.copy(STAGE_HERE / "plan.json", stage / "plan.json")
    elif not (stage / "plan.json").is_file():
        sys.exit("no plan on this machine: it was given back since call 1; start the window again with call 1")
    plan = json.loads((stage / "plan.json").read_text())
    seeds = plan.get("table") == "seeds32"
    if number <= len(plan["parts"]):
        receive(number, plan, stage)
    elif not (seeds and (stage / "cifar10").is_dir()):
        sys.exit(f"call {number} goes on with the seeds32 table, which this machine has not started: the machine "
                 "was given back since; start the window again with call 1")
    if number == 1:
        install_wheels()
        if not seeds:
            throughput(out)
    if number == len(plan["parts"]):
        unpack(plan, stage)
    if number >= len(plan["parts"]):
        (seeds_table if seeds else time_to_fid)(stage, out, started)


def receive(number: int, plan: dict, stage: Path) -> None:
    """Append this call's part to the bundle, in order (a lost machine shows as a missing earlier part)."""
    received = stage / "received"
    have = int(received.read_text()) if received.exists() else 0
    if have != number - 1:
        sys.exit(f"call {number} needs parts 1..{number - 1} on this machine, which has {have}: the machine was "
                 "given back since; start the window again with call 1")
    part = STAGE_HERE / plan["parts"][number - 1]
    with open(stage / "bundle.tar", "ab") as bundle, open(part, "rb") as block:
        shutil.copyfileobj(block, bundle)
    received.write_text(str(number))
    print(f"part {number}/{len(plan['parts'])} staged ({part.stat().st_size / 2**20:.1f} MiB)", flush=True)


def install_wheels() -> None:
    missing = subprocess.run([sys.executable, "-c", "import diffusers, datasets, torch_fidelity"],
                             capture_output=True).returncode != 0
    wheels = sorted(str(p) for p in (STAGE_HERE / "whl").glob("*.whl"))
    if missing and not wheels:
        sys.exit("diffusers, datasets or torch-fidelity is missing and no wheels were carried")
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *wheels], check=True)


def throughput(out: Path) -> None:
    """Our loop against diffusers' example step: fp32, then bf16 + channels_last + TF32 + compile."""
    size = sizes()
    for name, extra in (("fp32", []), ("fast", size.speed_flags)):
        run([sys.executable, "benchmarks/train_throughput.py", *size.throughput_flags, *extra,
             "--output_json", str(out / f"throughput-{name}.json")], out / f"throughput-{name}.log")


def unpack(plan: dict, stage: Path) -> None:
    """The bundle's files where the protocol reads them, checked against the sums packed with them."""
    with tarfile.open(stage / "bundle.tar") as tar:
        tar.extractall(stage, filter="data")
    for name, expected in plan["sha256"].items():
        if sha256_of(stage / name) != expected:
            sys.exit(f"{name} arrived damaged (sha256 differs): start the window again with call 1")
    data = stage / "cifar10" / "plain_text"
    data.mkdir(parents=True, exist_ok=True)
    (stage / "train.parquet").replace(data / "train-00000-of-00001.parquet")
    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (stage / WEIGHTS_NAME).replace(cache / WEIGHTS_NAME)
    (stage / "bundle.tar").unlink()


def time_to_fid(stage: Path, out: Path, started: float) -> None:
    """The quick start's GPU row (then the data row, if the call has time left), by time_to_fid.py's GPU
    protocol; its table, figure and logs to $OUT."""
    size = sizes()
    runs = stage / "time_to_fid"
    common = [sys.executable, "benchmarks/time_to_fid.py", "--protocol", "gpu", "--dataset_name",
              str(stage / "cifar10"), "--output_dir", str(runs), "--num_samples", str(size.num_samples),
              *size.time_to_fid_flags]
    run([*common, "--recipes", "quickstart", "--budgets", f"{size.budget_minutes:g}"], out / "quickstart.log")
    collect(runs, out)
    if (time.perf_counter() - started) / 60 < size.data_row_deadline_minutes:
        run([*common, "--recipes", "data"], out / "data.log")
        collect(runs, out)
    else:
        print("no time left in this call for the data row: run it in a later window", flush=True)


def seeds_table(stage: Path, out: Path, started: float) -> None:
    """Seed 002's families by time_to_fid.py's gpu32 protocol, then the data row, one at a time (at least one a
    call) until the call's deadline; a rerun skips the rows done, so the next call goes on where this one stopped."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import time_to_fid

    size = sizes()
    runs = stage / "seeds32"
    done = json.loads((runs / "time_to_fid.json").read_text())["rows"] if (runs / "time_to_fid.json").exists() else []
    planned = [(minutes, recipe) for minutes, recipes in time_to_fid.PROTOCOLS["gpu32"].plan.items()
               for recipe in size.seeds_recipes or recipes] + [(0, time_to_fid.DATA_FLOOR)]  # the floor last
    left = [(minutes, recipe) for minutes, recipe in planned if not any(r["recipe"] == recipe for r in done)]
    for index, (minutes, recipe) in enumerate(left):
        if index and (time.perf_counter() - started) / 60 > size.seeds_deadline_minutes:
            print(f"{len(left) - index} families left: go on with the next call", flush=True)
            return
        run([sys.executable, "benchmarks/time_to_fid.py", "--protocol", "gpu32", "--dataset_name",
             str(stage / "cifar10"), "--output_dir", str(runs), "--num_samples", str(size.num_samples),
             "--recipes", recipe, "--budgets", f"{size.seeds_budget_minutes or minutes:g}", *size.seeds_flags],
            out / f"{recipe}.log")
        collect(runs, out)
    print("the seeds32 table is complete", flush=True)


def collect(runs: Path, out: Path) -> None:
    for name in ("time_to_fid.json", "time_to_fid.md", "time_to_fid.png"):
        if (runs / name).exists():
            shutil.copy(runs / name, out / name)


def run(command: list[str], log: Path) -> None:
    """One step, its output to ``log`` (torch.compile's warnings would flood the returned tail)."""
    print("$", " ".join(command), flush=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    packing = steps.add_parser("pack", help="here: .stage/ with the wheels and the bundle in parts")
    packing.add_argument("--data", type=Path, default=DEFAULT_DATA)
    packing.add_argument("--weights", type=Path, default=default_cache_dir() / WEIGHTS_NAME)
    packing.add_argument("--no_wheels", action="store_true", help="carry no wheels (the machine has them)")
    packing.add_argument("--table", default="quickstart", choices=["quickstart", "seeds32"],
                         help="quickstart: throughput and the quick start's row; seeds32: seed 002's seven families")
    steps.add_parser("plan", help="the device calls of the window, from .stage/plan.json")
    calling = steps.add_parser("call", help="on the device: call N of the window")
    calling.add_argument("number", type=int)
    args = parser.parse_args(argv)
    if args.step == "pack":
        plan = pack(args.data, args.weights, wheels=not args.no_wheels, table=args.table)
        print(f"{len(plan['parts'])} parts; the working tree is {plan['tree_bytes'] / 2**20:.1f} MiB")
    if args.step in ("pack", "plan"):
        plan = json.loads((STAGE_HERE / "plan.json").read_text())
        for listed in calls(plan):
            print(f"{listed['command']}    carry {' '.join(listed['carry'])}    ({listed['does']})")
        print("sizes:", json.dumps(asdict(sizes())))
    if args.step == "call":
        call(args.number)


if __name__ == "__main__":
    main()
