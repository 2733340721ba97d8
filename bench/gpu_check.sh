#!/usr/bin/env bash
# The first command of a session lent a CUDA GPU, from the repository root:
#     bash bench/gpu_check.sh            # 8 minutes at most; the JSON summary in $OUT (else ./gpu-check-out)
#     bash bench/gpu_check.sh --dry-run  # the same path on CPU with the tiny model, in seconds
# Installs the wheels carried in .wheels/ (bench/fetch_wheels.sh puts them there) into a private
# folder put first on PYTHONPATH, then runs bench/gpu_check.py (its docstring says what it checks).
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.wheels}          # where the carried wheels are
SITE=${GPU_CHECK_SITE:-/tmp/chef-genius-wheels}  # where they are installed (first on PYTHONPATH)
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    started=$(date +%s)
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl; then
        echo "gpu_check: installing the wheels in $WHEELS/ failed (see pip's message above)" >&2
        exit 2
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS/ in $(( $(date +%s) - started )) s" >&2
fi
exec "$PYTHON" -m bench.gpu_check "$@"
