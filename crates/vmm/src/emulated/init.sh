#!/bin/busybox sh
# PID 1 of the emulated host. It loads the KVM, virtio and TUN modules listed in
# /isobench/modules, checks that /dev/kvm works, runs /isobench/command with its stdout and
# stderr on their own virtio-serial ports, reports on the status port and powers the machine
# off. The host side parses the status records; see `emulated::status`.

/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

status_port=/dev/null

# Sends one status record. Until the status port exists, records go to the console, framed by
# the ASCII record and unit separators so that kernel messages around them do not matter.
report() {
    if [ "$status_port" = /dev/null ]; then
        printf '\036isobench-emulated:%s\037\n' "$*" > /dev/console
    else
        printf '%s %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*" > "$status_port"
    fi
}

finish() {
    sync
    reboot -f
    sleep 60
}

fail() {
    report "error $*"
    finish
}

# Prints the device node of the virtio-serial port named $1, waiting for the port to be
# announced: the driver adds ports from control messages after the module has loaded.
find_port() {
    attempt=0
    while [ "$attempt" -lt 100 ]; do
        for port in /sys/class/virtio-ports/*; do
            if [ -f "$port/name" ] && [ "$(cat "$port/name")" = "$1" ] \
                && [ -c "/dev/${port##*/}" ]; then
                echo "/dev/${port##*/}"
                return 0
            fi
        done
        attempt=$((attempt + 1))
        sleep 0.1
    done
    return 1
}

# Prints the device node of the virtio-blk disk whose serial is $1.
find_disk() {
    for disk in /sys/block/vd*; do
        if [ "$(cat "$disk/serial" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${disk##*/}"
            return 0
        fi
    done
    echo "disk $1 not found" >&2
    return 1
}

# Prints the options for module $1 that the kernel command line gives as `$1.option=value`,
# the way modprobe reads them; insmod reads only its own arguments.
module_options() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
            "$1".*) printf '%s ' "${word#"$1".}" ;;
        esac
    done
}

grep -qw svm /proc/cpuinfo || fail "nested_svm_missing"

while read -r module; do
    name=$(basename "$module" .ko | tr - _)
    # The options are words on purpose: each becomes one insmod argument.
    # shellcheck disable=SC2046
    insmod "/lib/modules/isobench/$module" $(module_options "$name") \
        || fail "insmod_failed $module"
done < /isobench/modules

status_port=$(find_port isobench.status) || { status_port=/dev/null; fail "port_missing status"; }
stdout_port=$(find_port isobench.stdout) || fail "port_missing stdout"
stderr_port=$(find_port isobench.stderr) || fail "port_missing stderr"

# A heartbeat record every 5 s lets the host side tell a frozen emulated host from a slow one.
# Before each record, a task runs pinned to each processor in turn. So a single processor that
# no longer schedules tasks silences the heartbeat, as a frozen host does.
cpus=$(nproc)
(
    while sleep 5; do
        cpu=0
        while [ "$cpu" -lt "$cpus" ]; do
            taskset -c "$cpu" true
            cpu=$((cpu + 1))
        done
        report heartbeat
    done
) &

[ -c /dev/kvm ] || fail "kvm_missing"
# The nested KVM's settings, for reading a failed run's console.
for parameter in /sys/module/kvm_amd/parameters/*; do
    echo "isobench: kvm_amd.${parameter##*/}=$(cat "$parameter" 2>/dev/null)"
done > /dev/console
report "kvm_ready"

ip link set lo up

. /isobench/env.sh || fail "env_failed"
report "command_started"
cd /tmp
sh /isobench/command < /dev/null > "$stdout_port" 2> "$stderr_port"
report "exit $?"
finish
