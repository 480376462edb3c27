#!/bin/sh
# Builds the guest kernel: tinyconfig plus microvm.config, all built in.
#
# Usage: build.sh OUT_DIR WORK_DIR LOG_FILE
# Writes OUT_DIR/vmlinux, OUT_DIR/bzImage and OUT_DIR/config. WORK_DIR holds the source tree;
# the caller removes it. Tool output goes to LOG_FILE, progress lines starting with "step: "
# to standard output and one-line errors starting with "error: " to standard error.
set -eu

out=$1
work=$2
log=$3
here=$(cd "$(dirname "$0")" && pwd)
. "$here/recipe.env"

installed=$(dpkg-query -W -f '${Version}' "$LINUX_SOURCE_PACKAGE" 2>/dev/null || true)
if [ "$installed" != "$LINUX_SOURCE_VERSION" ]; then
    echo "error: $LINUX_SOURCE_PACKAGE ${installed:-is not installed}; the recipe pins" \
        "$LINUX_SOURCE_VERSION: run scripts/setup-host or update guest-images/kernel/recipe.env" >&2
    exit 1
fi
for tool in make gcc flex bison bc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is missing: run scripts/setup-host" >&2
        exit 1
    fi
done

mkdir -p "$out" "$work" "$(dirname "$log")"
src=$work/linux

echo "step: unpacking $LINUX_SOURCE_TARBALL"
rm -rf "$src"
mkdir -p "$src"
tar -xf "$LINUX_SOURCE_TARBALL" -C "$src" --strip-components=1

echo "step: configuring (tinyconfig + microvm.config)"
cd "$src"
make tinyconfig >>"$log" 2>&1
./scripts/kconfig/merge_config.sh -m .config "$here/microvm.config" >>"$log" 2>&1
make olddefconfig >>"$log" 2>&1

# Every line of the fragment must have survived olddefconfig.
missing=0
while IFS= read -r line; do
    case $line in
    CONFIG_*=*)
        grep -qxF "$line" .config || { echo "error: .config lacks $line" >&2; missing=1; }
        ;;
    "# CONFIG_"*" is not set")
        name=${line#\# }
        name=${name%% *}
        if grep -q "^$name=" .config; then
            echo "error: .config sets $name, the fragment disables it" >&2
            missing=1
        fi
        ;;
    esac
done <"$here/microvm.config"
if [ "$missing" -ne 0 ]; then
    echo "error: guest-images/kernel/microvm.config asks for options that Kconfig dropped:" \
        "add their dependencies to the fragment" >&2
    exit 1
fi

jobs=$(nproc)
echo "step: compiling vmlinux and bzImage with $jobs jobs (log: $log)"
if ! nice -n 10 make -j"$jobs" vmlinux bzImage >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "error: kernel build failed: see $log" >&2
    exit 1
fi

echo "step: copying vmlinux, bzImage and config"
cp vmlinux "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage"
cp .config "$out/config"
