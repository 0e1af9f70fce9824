#!/usr/bin/env bash
# Prepare a Debian 12 machine to build and test r8imfs; safe to run again.
#
# Installs the Debian packages below when any is missing (as root, or through
# sudo), then creates .venv and installs r8imfs editable with its test extras,
# skipping pip when .venv/.stamp is newer than pyproject.toml.
#
# docker-registry's package enables a systemd service on :5000 where systemd
# runs; nothing here uses it: tests start their own registries (tests/
# helpers/registry.py) with their own config on free loopback ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(
    fuse3 libfuse3-dev pkg-config   # the FUSE mount; pyfuse3 builds against libfuse3
    build-essential python3-dev     # pyfuse3 ships no wheels: it compiles on install
    python3-venv
    docker-registry apache2-utils   # the test registry and htpasswd for its basic auth
    skopeo umoci                    # third-party clients the tests compare against
    stargz-snapshotter containerd   # ctr-remote makes eStargz and stargz zstd:chunked test layers
    zstd tar
    libisal2                        # ISA-L: resuming gzip spans ~25% faster than zlib-ng (zran)
    libdeflate0                     # libdeflate: whole gzip spans ~25% faster than ISA-L (zran)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A venv made while python3-venv was missing has no pip: make it again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m venv --clear .venv
fi

if [ ! -f .venv/.stamp ] || [ pyproject.toml -nt .venv/.stamp ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch .venv/.stamp
fi

# Byte-compile the package, as `pip install` of a wheel does: an editable
# install leaves that to the first import, and where PYTHONDONTWRITEBYTECODE
# is set every run of r8imfs would compile ~120 modules again (about 0.5 s
# of each command's start, which `mount` pays before it is ready).
.venv/bin/python -m compileall -q -j 0 r8imfs >/dev/null
