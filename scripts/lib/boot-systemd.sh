# Boots a throwaway systemd as PID 1 of new PID/mount namespaces, on a
# copy-on-write overlay of / so nothing it writes reaches this machine
# (docs/testing.md). Run under `unshare --pid --fork --mount --uts --ipc`.
# $1: an empty directory for the overlay's scratch space. With $2 = keep, the
# scratch space is $1 itself, not a tmpfs that ends with the namespace: the
# overlay's upper directory outlives a reboot of the testbed, and booting
# again on the same $1 is the "next boot" of the same machine.
set -e
mount --make-rprivate /
S="$1"; [ "${2:-}" = keep ] || mount -t tmpfs tmpfs "$S"
mkdir -p "$S/upper" "$S/work" "$S/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$S/upper,workdir=$S/work" "$S/root"
R="$S/root"
mount -t proc proc "$R/proc"; mount --rbind /sys "$R/sys"; mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"; mount -t tmpfs tmpfs "$R/tmp"
mkdir -p "$R/run/systemd/system"
printf '[Unit]\nRequires=dbus.socket systemd-journald.socket\nAfter=dbus.socket systemd-journald.socket\n' > "$R/run/systemd/system/test.target"
hostname web1
# pivot_root, not chroot: the kernel refuses a new user namespace to a
# process whose root is not its mount namespace's (a chroot), so a unit's
# PrivateUsers= would fail with "Failed to set up user namespacing:
# Operation not permitted". The old root is detached at once.
cd "$R"
mkdir run/.oldroot
pivot_root . run/.oldroot
umount -l /run/.oldroot
rmdir /run/.oldroot
# Then mounts inside the root propagate to each other, as on a booted machine:
# systemd makes / shared when it boots a machine but not in a container,
# and without it a mount made in a unit's own mount namespace never reaches
# PID 1's, so `LoadCredential=` would hand the unit an empty
# /run/credentials/<unit>. Only this namespace's mounts are peers: nothing
# propagates to this machine (its mounts were made private above).
mount --make-rshared /
exec /usr/bin/env container=other /lib/systemd/systemd --unit=test.target
