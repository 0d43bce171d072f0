#!/usr/bin/env bash
# Build the NVTX recorder (profiling/nvtx_recorder.c) with gcc against the NVTX v3 headers.
#
#   profiling/build_recorder.sh [OUTPUT.so]     prints the path of the built library
#
# OUTPUT defaults to ${XDG_CACHE_HOME:-~/.cache}/hpcdiff/libnvtx_recorder.so; it is rebuilt only
# when the source is newer. Headers: $NVTX_INCLUDE if set, else the first of
# /usr/local/cuda*/include/nvtx3, /usr/include/nvtx3 that exists.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$HERE/nvtx_recorder.c
OUT=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/hpcdiff/libnvtx_recorder.so}

find_headers() {
    local dir
    if [ -n "${NVTX_INCLUDE:-}" ]; then
        [ -f "$NVTX_INCLUDE/nvToolsExt.h" ] && { echo "$NVTX_INCLUDE"; return 0; }
        echo "build_recorder: NVTX_INCLUDE=$NVTX_INCLUDE has no nvToolsExt.h" >&2; return 1
    fi
    for dir in /usr/local/cuda*/include/nvtx3 /usr/include/nvtx3; do
        [ -f "$dir/nvToolsExt.h" ] && { echo "$dir"; return 0; }
    done
    echo "build_recorder: no NVTX v3 headers (looked in /usr/local/cuda*/include/nvtx3 and" \
        "/usr/include/nvtx3). Install the CUDA toolkit headers or get github.com/NVIDIA/NVTX" \
        "(c/include/nvtx3) and set NVTX_INCLUDE to that directory." >&2
    return 1
}

if [ ! -f "$OUT" ] || [ "$SRC" -nt "$OUT" ]; then
    INC=$(find_headers)
    command -v gcc >/dev/null || { echo "build_recorder: gcc not found" >&2; exit 1; }
    mkdir -p "$(dirname "$OUT")"
    gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror -I"$INC" -o "$OUT.tmp.$$" \
        "$SRC" -lpthread -ldl
    mv "$OUT.tmp.$$" "$OUT"
fi
echo "$OUT"
