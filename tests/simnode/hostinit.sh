#!/bin/sh
# PID 1 of a simulated node: assemble its root, pivot into it, say "ready", reap orphans.
# Runs under `unshare --mount --pid --fork --kill-child --propagation private`, so every
# mount below lives in this private mount namespace and dies with it (issue 3).
# usage: hostinit.sh STAGE_DIR [HOSTNAME]
set -eu
S=$1
R=$S/root
D=$S/disk

mount -t tmpfs -o mode=0755 grid-sim "$S"
# Only a caller that made a UTS namespace (unshare --uts) passes a hostname.
if [ -n "${2:-}" ]; then echo "$2" > /proc/sys/kernel/hostname; fi
mkdir -p "$R" "$D/usr/upper" "$D/usr/work" "$D/etc/upper" "$D/etc/work" \
  "$D/var" "$D/local" "$D/modules" "$D/src" "$D/home"
mount --bind "$R" "$R"  # pivot_root wants a mount point
cd "$R"
mkdir -p usr etc var tmp run proc sys dev root home opt mnt srv boot .oldroot
ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64

# /usr and /etc: the machine's, copy-on-write, so the fake driver and apt can write them.
mount -t overlay -o "lowerdir=/usr,upperdir=$D/usr/upper,workdir=$D/usr/work" grid-sim-usr usr
mount -t overlay -o "lowerdir=/etc,upperdir=$D/etc/upper,workdir=$D/etc/work" grid-sim-etc etc
# The node's "disk": fresh and writable, kept across a simulated reboot.
mount --bind "$D/var" var
mount --bind "$D/local" usr/local
mount --bind "$D/modules" usr/lib/modules
mount --bind "$D/src" usr/src
mount --bind "$D/home" root
for d in /usr/src/*; do  # the machine's headers, read-only; apt's stash for headers-missing
  name=${d##*/}
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "usr/src/$name"; continue; fi
  mkdir -p "usr/src/$name"
  mount --bind "$d" "usr/src/$name"
  mount -o remount,bind,ro "usr/src/$name"
done
mkdir -p var/lib/grid-sim/usr-src var/log var/cache var/tmp var/lib/dpkg
ln -s /run var/run; ln -s /run/lock var/lock
mount --rbind /usr/src var/lib/grid-sim/usr-src
mount -o remount,bind,ro var/lib/grid-sim/usr-src
# Never the real kernel: even an absolute /sbin/modprobe or /sbin/insmod is the fake.
for tool in modprobe insmod rmmod lsmod; do
  rm -f "usr/sbin/$tool"; ln -s /usr/local/lib/grid-sim/stub "usr/sbin/$tool"
done
rm -f usr/bin/systemctl; ln -s /usr/local/lib/grid-sim/stub usr/bin/systemctl

mount -t tmpfs -o mode=1777 tmpfs tmp
mount -t tmpfs -o mode=0755 tmpfs run
# nodev: no device file made in the node (the fakes' /dev/nvidia*, or the ones NVIDIA's
# real libnvidia-ml creates by itself) can be opened to reach this machine's kernel. The
# few devices a host needs are bind mounts of the machine's own.
mount -t tmpfs -o mode=0755,nodev tmpfs dev
for d in null zero full random urandom tty; do : > "dev/$d"; mount --bind "/dev/$d" "dev/$d"; done
mkdir -p dev/shm dev/pts; ln -s /proc/self/fd dev/fd
# The machine's sysfs read-only (PCI lives there); module state is a tmpfs the fakes own.
mount --bind /sys sys
mount -o remount,bind,ro sys
mount -t tmpfs -o mode=0755 tmpfs sys/module

pivot_root . .oldroot
cd /
mount -t proc proc /proc  # this PID namespace's own /proc: /proc/1 is this init
mount -t tmpfs -o mode=0755 tmpfs /proc/driver
umount -l /.oldroot
rmdir /.oldroot
mount --make-rshared /run  # the GPU Operator contract: /run is rshared on a node

echo ready
exec 1>/dev/null 2>&1 </dev/null
trap 'exit 0' TERM INT
# A shell as PID 1 reaps the orphans reparented to it whenever SIGCHLD wakes it.
while :; do sleep 3600 & wait $! || true; done
