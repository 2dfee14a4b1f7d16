#!/usr/bin/env bash
# Unpacks Debian 12's own QEMU 7.2 into build/qemu-7.2/ (not installed: `make install`
# puts QEMU 10 from bookworm-backports on the system) and prints the path of a wrapper
# that runs it, for bench/driver_bench.py --qemu to measure both side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
target=build/qemu-7.2
wrapper=$target/qemu-system-x86_64
if [ ! -x "$wrapper" ]; then
    rm -rf "$target" && mkdir -p "$target/debs"
    version=$(apt-cache madison qemu-system-x86 | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
    data=$(apt-cache madison qemu-system-data | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
    seabios=$(apt-cache madison seabios | awk '$3 ~ /^1\.16\.2/ {print $3; exit}')
    (cd "$target/debs" && apt-get download -qq "qemu-system-x86=$version" \
        "qemu-system-common=$version" "qemu-system-data=$data" "seabios=$seabios") 2>/dev/null
    for deb in "$target"/debs/*.deb; do dpkg -x "$deb" "$target/root"; done
    root=$(realpath "$target/root")
    printf '%s\n' '#!/bin/sh' \
        "exec $root/usr/bin/qemu-system-x86_64 -L $root/usr/share/qemu -L $root/usr/share/seabios \"\$@\"" \
        >"$wrapper"
    chmod +x "$wrapper"
fi
realpath "$wrapper"
