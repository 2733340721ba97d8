#!/usr/bin/env bash
# Puts in .wheels/ (ignored by git; it travels with the working tree to the GPU machine, 64 MiB in
# all) the wheels that machine lacks for bench/gpu_check.sh, downloaded here from the package index.
# The GPU machine (see README: Performance) has torch 2.11, transformers 5.17, accelerate, safetensors,
# tokenizers, pyarrow, numpy and huggingface-hub, and no `datasets`. The training path needs no
# `datasets` (the tokenized cache is read with pyarrow), so only transformers travels, at the version
# requirements.txt pins (5.17 lacks nothing we know of, but the pinned one is the one tested):
#     transformers 5.24.0   13.5 MB   pure Python (its needs: huggingface-hub>=1.31, tokenizers>=0.23.1,
#                                     regex, typer, safetensors>=0.8: all there)
# --with-datasets adds datasets and the two pure-Python needs the machine lacks, for the benchmark's
# Seq2SeqTrainer baseline with a datasets length column (0.9 MB; it also needs pyarrow>=24 and
# fsspec<=2026.9.0 there):
#     datasets 5.2.0 0.61 MB, dill 0.4.1 0.12 MB, multiprocess 0.70.19 0.15 MB
set -eu
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt | head -1; }
wanted=("$(pin transformers)")
if [ "${1:-}" = "--with-datasets" ]; then
    wanted+=("$(pin datasets)" dill==0.4.1 multiprocess==0.70.19)
fi
mkdir -p .wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .wheels "${wanted[@]}"
ls -l .wheels
du -ch .wheels/*.whl | tail -1
