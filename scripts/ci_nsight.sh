#!/usr/bin/env bash
# Real Nsight Systems for the profiling tests, on a Debian 12 (bookworm) machine, idempotent.
#
#   scripts/ci_nsight.sh install   apt-install Debian's non-free `nsight-systems` (2022.4) with its
#                                  path fix (no-op when done)
#   scripts/ci_nsight.sh status    exit 0 when nsys is ready, 1 otherwise
#
# Two quirks (see /work/shared/design/MEASUREMENTS.md, "NVTX and Nsight Systems"):
# * Debian installs the importer in /usr/lib/nsight-systems/host-linux-x64 while nsys looks for it
#   next to its own target directory; without the symlink made here only a .qdstrm is written.
# * nsys 2022.4 sees no ranges from the `nvtx` package >= 0.2.12 (the package asks the tool
#   nvtxDomainIsEnabled through the payload extension, this nsys answers "no", and every domain
#   becomes a DummyDomain). The tests therefore run the profiled command through
#   profiling/nsys_compat, which hands NVTX to nsys through profiling/nvtx_recorder.c in forward
#   mode (no payload extension: domains stay enabled). See profiling/README.md.
set -euo pipefail

NONFREE=/etc/apt/sources.list.d/hpcdiff-nonfree.sources
HOST_DIR=/usr/lib/nsight-systems/host-linux-x64
LINK=/usr/lib/x86_64-linux-gnu/nsight-systems/host-linux-x64

log() { echo "ci_nsight: $*" >&2; }

have_nsys() {
    dpkg-query -W -f='${Status}\n' nsight-systems 2>/dev/null | grep -q "install ok installed"
}

install_nsys() {
    have_nsys && return 0
    if [ "$(id -u)" != 0 ]; then
        log "nsight-systems is missing and we are not root: apt-get install nsight-systems"; exit 1
    fi
    if [ ! -f "$NONFREE" ]; then
        log "enabling Debian bookworm contrib + non-free (nvidia-support, libcuda1) in $NONFREE"
        cat >"$NONFREE" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    log "installing nsight-systems (~140 MB, once)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends nsight-systems >/dev/null
}

fix_importer_path() {
    [ -e "$LINK" ] && return 0
    [ -d "$HOST_DIR" ] || { log "nsight-systems has no $HOST_DIR"; exit 1; }
    mkdir -p "$(dirname "$LINK")"
    ln -s "$HOST_DIR" "$LINK"
}

case "${1:-}" in
    install) install_nsys; fix_importer_path ;;
    status) have_nsys && [ -e "$LINK" ] ;;
    *) echo "usage: $0 {install|status}" >&2; exit 2 ;;
esac
