#!/bin/bash
# Install corral on a Debian 12 machine and start a single-node cluster.
#
#   ./install.sh              install everything, start the node, print URL and login
#   ./install.sh --no-start   install only
#   ./install.sh --test-deps  also install what the test suite needs (Ceph daemons,
#                             zfs-fuse, Chromium, Prometheus, test Python packages)
#
# Idempotent: run it again to upgrade in place (a running corrald is restarted on
# the new code; its guests keep running). Must run as root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${CORRAL_VENV:-/opt/corral/venv}"
START=1
TEST_DEPS=0
for arg in "$@"; do
    case "$arg" in
        --no-start) START=0 ;;
        --test-deps) TEST_DEPS=1 ;;
        *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# What a node needs to run guests and reach every storage type.
PACKAGES=(
    python3 python3-venv python3-dev python3-pip gcc
    etcd-server etcd-client
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients python3-libvirt
    qemu-system-x86 qemu-utils qemu-block-extra ovmf
    lxc python3-lxc uidmap busybox-static debootstrap
    btrfs-progs lvm2 ceph-common python3-rados python3-rbd
    iproute2 nftables rsync xz-utils zstd openssl ca-certificates procps
    libpam0g genisoimage
    python3-rrdtool
)
# Only for the test suite: real services the tests start and stop.
TEST_PACKAGES=(
    ceph-mon ceph-mgr ceph-osd
    zfs-fuse
    linux-image-amd64 cpio
    chromium
    prometheus
    python3-matplotlib
    slapd
)

export DEBIAN_FRONTEND=noninteractive
want=("${PACKAGES[@]}")
[ "$TEST_DEPS" = 1 ] && want+=("${TEST_PACKAGES[@]}")
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Wait for another apt/dpkg run to finish rather than failing on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -q
    # The package scripts of some daemons try systemd and fail harmlessly here.
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# libvirtd refuses to start without the users, groups and directories that
# libvirt-daemon-system would create (we do not want its systemd units).
log "preparing libvirt"
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt >/dev/null || groupadd --system libvirt
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/libvirt \
    --gid kvm --groups libvirt-qemu --shell /usr/sbin/nologin libvirt-qemu
# Debian's udev rule leaves /dev/kvm group kvm mode 0660; where no udev ran (a
# container, a minimal VM) it stays root:root 0600, and libvirtd then judges its
# QEMU capability cache stale at every look-up: each VM start re-probes QEMU and
# takes a minute. Do what the rule does (`corral status` warns if it changes).
# A /dev/kvm bound in from outside (this host is a container) is the outer host's
# device: changing it here would change it there, so leave it to that host.
if [ -c /dev/kvm ] && mountpoint -q /dev/kvm; then
    log "leaving /dev/kvm as it is: it is bound in from the host that runs this container"
elif [ -c /dev/kvm ]; then
    if [ "$(stat -c %G /dev/kvm)" != kvm ] || [ $(( 0$(stat -c %a /dev/kvm) & 0660 )) != $(( 0660 )) ]; then
        log "setting /dev/kvm to group kvm, mode 0660 (as udev would)"
        chgrp kvm /dev/kvm
        chmod ug+rw /dev/kvm
    fi
fi
# POSIX shared memory (sem_open/shm_open: Python's multiprocessing, which Ansible
# uses, and Chromium) lives in /dev/shm, a tmpfs that every Debian boot mounts. A
# container run with a bare init (tini, lxc.autodev) has none: mount it as the
# boot would (it lasts until that container restarts).
if ! mountpoint -q /dev/shm 2>/dev/null; then
    log "mounting a tmpfs on /dev/shm (POSIX shared memory; this system's init did not)"
    { mkdir -p /dev/shm && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm; } ||
        log "WARNING: could not mount /dev/shm: Python multiprocessing (Ansible) will fail"
fi
mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/images /var/cache/libvirt
if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then libvirtd -d; fi

# Unprivileged containers map their ids into root's subordinate range (as Proxmox sets up).
for f in /etc/subuid /etc/subgid; do
    grep -q '^root:' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
done

log "installing corral into $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip==24.3.1"
if [ "$TEST_DEPS" = 1 ]; then
    # Editable, so the tests run the checkout itself.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HERE[test]"
else
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$HERE"
fi
if [ "$VENV" = /opt/corral/venv ]; then
    # Only the real install goes on PATH (a CI dry run may use another venv).
    for tool in corrald corralsh corral; do
        ln -sf "$VENV/bin/$tool" "/usr/local/bin/$tool"
    done
    install -d -m 0755 /usr/local/lib/systemd/system
    install -m 0644 "$HERE/ansible/files/corrald.service" /usr/local/lib/systemd/system/corrald.service
fi

# An upgrade in place must take effect: a corrald already running from this venv
# still runs the old code, so restart it (guests keep running; under systemd the
# unit is restarted). A node that was stopped stays stopped with --no-start.
DATA="${CORRAL_DATA_DIR:-/var/lib/corral}"
running=""
if [ -f "$DATA/corrald.pid" ]; then
    pid="$(cat "$DATA/corrald.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$VENV/bin/corrald"; then
        running="$pid"
    fi
fi
if [ -n "$running" ]; then
    log "upgrading in place: restarting corrald (pid $running) so the node runs the new code"
    if [ -d /run/systemd/system ] && systemctl is-active --quiet corrald 2>/dev/null; then
        systemctl restart corrald
        echo "corral: corrald.service restarted; the node runs the code installed now"
    else
        "$VENV/bin/corral" --data-dir "$DATA" restart
    fi
    echo
    echo "corral is running the new code. Try:  corralsh get /cluster/resources"
elif [ "$START" = 1 ]; then
    log "starting corral"
    "$VENV/bin/corral" --data-dir "$DATA" start
    echo
    echo "corral is running. Try:  corralsh get /cluster/resources"
    echo "Stop it with:            corral stop"
fi
