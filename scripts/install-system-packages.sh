#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those that are missing.
# PostgreSQL for the test suite; QEMU, debootstrap and friends to build and run guests;
# skopeo, umoci and rsync to build images from registries and tarballs; wrk for the
# benchmarks; a registry (docker-registry) and htpasswd for the image tests; Chromium for
# the test that loads /docs in a browser.
set -euo pipefail

packages=(
    postgresql
    qemu-system-x86 qemu-utils debootstrap busybox-static e2fsprogs cpio zstd lz4 passt git
    skopeo umoci rsync
    wrk docker-registry apache2-utils
    chromium
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
