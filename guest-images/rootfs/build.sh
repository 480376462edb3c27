#!/bin/sh
# Builds the guest root filesystem: Debian minbase, ipykernel, numpy and isobench-init.
#
# Usage: build.sh OUT_DIR WORK_DIR LOG_FILE
# Writes OUT_DIR/tree/, OUT_DIR/rootfs.tar, OUT_DIR/rootfs.ext4 and OUT_DIR/packages.txt.
# WORK_DIR holds the compiled entrypoint; the caller removes it. Tool output goes to LOG_FILE,
# progress lines starting with "step: " to standard output and one-line errors starting with
# "error: " to standard error.
set -eu

out=$1
work=$2
log=$3
here=$(cd "$(dirname "$0")" && pwd)
init_src=$here/../init/isobench-init.c
. "$here/recipe.env"

if [ "$(id -u)" -ne 0 ]; then
    echo "error: building the root filesystem needs root (mmdebstrap, chroot, file owners):" \
        "run as root" >&2
    exit 1
fi
for tool in mmdebstrap mkfs.ext4 gcc tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is missing: run scripts/setup-host" >&2
        exit 1
    fi
done

mkdir -p "$out" "$work" "$(dirname "$log")"
tree=$out/tree

echo "step: compiling isobench-init"
gcc -static -O2 -Wall -Wextra -Werror -o "$work/isobench-init" "$init_src" >>"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    echo "error: compiling $init_src failed: see $log" >&2
    exit 1
}

echo "step: installing Debian $DEBIAN_SUITE $DEBIAN_VARIANT with $DEBIAN_PACKAGES"
# Documentation, man pages and translations are never unpacked; copyright files stay.
if ! nice -n 10 mmdebstrap --variant="$DEBIAN_VARIANT" --include="$DEBIAN_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$DEBIAN_SUITE" "$tree" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    if grep -qiE 'Could not resolve|Failed to fetch|Temporary failure|Connection failed' "$log"; then
        echo "error: the Debian archive is unreachable: check the network, then rerun" >&2
    elif grep -qi 'No space left' "$log"; then
        echo "error: no space left on device while installing into $tree: free space, then rerun" >&2
    else
        echo "error: mmdebstrap failed: see $log" >&2
    fi
    exit 1
fi

echo "step: installing /sbin/isobench-init and trimming"
install -m 0755 "$work/isobench-init" "$tree/sbin/isobench-init"
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/* "$tree"/var/cache/debconf/*-old \
    "$tree"/var/log/* "$tree"/usr/share/doc-base "$tree"/usr/share/bug
mkdir -p "$tree/proc" "$tree/sys" "$tree/dev" "$tree/tmp" "$tree/run"
chmod 1777 "$tree/tmp"
echo isobench >"$tree/etc/hostname"
chroot "$tree" dpkg-query -W -f '${Package} ${Version}\n' >"$out/packages.txt"

echo "step: exporting rootfs.tar"
tar --numeric-owner --sort=name -C "$tree" -cf "$out/rootfs.tar" .

echo "step: building rootfs.ext4"
# Size: the tree plus a quarter and 64 MiB of headroom, so a read-write mount still works.
used_kib=$(du -sk --apparent-size "$tree" | cut -f1)
inodes=$(find "$tree" | wc -l)
size_mib=$(( (used_kib * 5 / 4) / 1024 + 64 ))
# No journal and no reserved blocks: the microVM mounts it read-only.
if ! mkfs.ext4 -q -F -L isobench-root -O ^has_journal -m 0 -N $((inodes * 2)) \
    -E root_owner=0:0 -d "$tree" "$out/rootfs.ext4" "${size_mib}M" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "error: mkfs.ext4 failed: see $log" >&2
    exit 1
fi
