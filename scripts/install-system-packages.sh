#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those that are missing, and on
# Debian 12 (bookworm) QEMU 10 from bookworm-backports (see below).
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

# QEMU 10 copies a VM's memory while it runs to commit it; under TCG, 7.2 cannot be trusted
# to (src/vers_orchestrator/drivers/qemu/snapshots.py). Debian 12 ships 7.2, its
# backports 10.0. Only QEMU's own packages (and the SeaBIOS it needs) come from there;
# where backports cannot be reached, 7.2 stays and works, stopping VMs longer to commit.
# Every qemu-* package: another emulator of 7.2 left unpinned would be removed.
QEMU_PACKAGES="qemu-* seabios"
BACKPORTS_SOURCE=/etc/apt/sources.list.d/vers-orchestrator-backports.sources
BACKPORTS_PIN=/etc/apt/preferences.d/vers-orchestrator-qemu

wants_backports_qemu() {
    [ -r /etc/os-release ] || return 1
    local codename installed
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ "$codename" = bookworm ] || return 1
    installed=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    [ -z "$installed" ] || dpkg --compare-versions "$installed" lt 1:10
}

use_backports_qemu() {
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
        "Suites: bookworm-backports" "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$BACKPORTS_SOURCE"
    printf '%s\n' "Package: $QEMU_PACKAGES" "Pin: release n=bookworm-backports" \
        "Pin-Priority: 990" >"$BACKPORTS_PIN"
}

upgrade_qemu=0
if wants_backports_qemu; then upgrade_qemu=1; fi
[ ${#missing[@]} -eq 0 ] && [ $upgrade_qemu -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if [ ${#missing[@]} -eq 0 ]; then
        echo "QEMU 7.2 works; QEMU 10 from bookworm-backports commits faster (make install as root)" >&2
        exit 0
    fi
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ $upgrade_qemu -eq 1 ]; then
    use_backports_qemu
    if apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends --no-remove qemu-system-x86 qemu-utils >&2; then
        echo "QEMU: $(qemu-system-x86_64 --version | head -1)" >&2
    else
        echo "QEMU 10 from bookworm-backports could not be installed; keeping Debian's QEMU" >&2
        rm -f "$BACKPORTS_SOURCE" "$BACKPORTS_PIN"
        apt-get update -qq || true
    fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
