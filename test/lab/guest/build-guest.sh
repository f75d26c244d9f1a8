#!/usr/bin/env bash
# Builds the lab's real guest: Debian 12 (bookworm) from Debian packages, for direct kernel boot under TCG.
#
#   build-guest.sh OUT_DIR
#
# Writes into OUT_DIR (which must not exist yet; the caller renames it into the cache when this succeeds):
#   vmlinuz, initrd.img   the guest's kernel and a small initrd (virtio + ext4 only), for <kernel>/<initrd>
#   root.qcow2            the root filesystem (ext4, 1 GiB virtual, no partition table: root=/dev/vda)
#   data.qcow2            a second, empty ext4 disk (64 MiB) the guest mounts at /data (multi-disk freeze)
#   info.json             what was built (kernel version, mirror, sizes, seconds per step)
# The cache key is the SHA-256 of THIS file (test/lab/guestImage.ts), so any change here rebuilds the guest.
#
# Inside the guest: qemu-guest-agent (started by Debian's udev rule when the virtio channel appears), a unit
# `heartbeat.service` appending "<unix time> <counter>" to /var/lib/heartbeat.log and /data/heartbeat.log every
# second (real guest writes), a serial getty on ttyS0, root without a password (console debugging only; the
# guest never has a network interface).
#
# The mirror is the one apt on this machine uses (/etc/apt/sources.list*), or $LAB_DEBIAN_MIRROR.
set -euo pipefail
export LC_ALL=C

OUT=${1:?usage: build-guest.sh OUT_DIR}
[ "$(id -u)" = 0 ] || { echo "build-guest: must run as root (debootstrap, chroot)" >&2; exit 2; }
for t in debootstrap mkfs.ext4 qemu-img chroot; do
  command -v "$t" >/dev/null || { echo "build-guest: $t is missing; install the packages in scripts/lab-packages.txt (bash scripts/lab-install.sh)" >&2; exit 2; }
done
[ ! -e "$OUT" ] || { echo "build-guest: $OUT exists already" >&2; exit 2; }

# The first Debian mirror apt uses for bookworm main, from one-line (.list) and deb822 (.sources) files.
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
          if ($(i+1) == "bookworm") { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: paragraphs separated by blank lines; a paragraph with Types: deb and Suites: ... bookworm ...
    awk 'BEGIN { RS = ""; FS = "\n" }
         { types = ""; uris = ""; suites = ""
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Types:/) types = $i; else if ($i ~ /^URIs:/) uris = $i; else if ($i ~ /^Suites:/) suites = $i }
           if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t]bookworm([ \t]|$)/) { sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
  done
}
MIRROR=${LAB_DEBIAN_MIRROR:-$(find_mirror | head -n1)}
[ -n "$MIRROR" ] || { echo "build-guest: found no Debian bookworm mirror in /etc/apt/sources.list*; set LAB_DEBIAN_MIRROR" >&2; exit 2; }

WORK="$OUT.work"
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
ROOT="$WORK/root"
t0=$(date +%s)
step() { echo "build-guest: [$(( $(date +%s) - t0 )) s] $*"; }

step "debootstrap bookworm from $MIRROR"
# minbase + what a guest needs to boot, answer the agent and shut down (without dbus: "Failed to connect to bus").
debootstrap --variant=minbase \
  --include=linux-image-cloud-amd64,systemd-sysv,udev,dbus,qemu-guest-agent,e2fsprogs \
  bookworm "$ROOT" "$MIRROR"
t_debootstrap=$(( $(date +%s) - t0 ))

step "configuring the guest"
echo labguest > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 labguest\n' > "$ROOT/etc/hosts"
cat > "$ROOT/etc/fstab" <<'EOF'
/dev/vda  /      ext4  rw,errors=remount-ro  0 0
# nofail: a drill of a backup holding only vda still boots
/dev/vdb  /data  ext4  rw,nofail  0 0
EOF
mkdir -p "$ROOT/data"
chroot "$ROOT" passwd -d root >/dev/null
cat > "$ROOT/usr/local/sbin/heartbeat" <<'EOF'
#!/bin/bash
# One line per second on each disk: the guest's unix time and a counter. Only bash builtins (printf %()T,
# read -t on a FIFO instead of sleep): a fork per second costs a TCG guest most of its CPU. /data counts only
# when the data disk is mounted there (its root holds .labdata); a drill of vda alone has no /data.
mkfifo -m 0600 /run/heartbeat.fifo 2>/dev/null
exec 9<>/run/heartbeat.fifo
n=0
while :; do
  n=$((n + 1))
  printf -v line '%(%s)T %d' -1 "$n"
  echo "$line" >> /var/lib/heartbeat.log
  [ -e /data/.labdata ] && echo "$line" >> /data/heartbeat.log
  read -t 1 -u 9 _
done
EOF
chmod 0755 "$ROOT/usr/local/sbin/heartbeat"
cat > "$ROOT/etc/systemd/system/heartbeat.service" <<'EOF'
[Unit]
Description=lab guest heartbeat (a line per second on each disk)
After=local-fs.target

[Service]
ExecStart=/usr/local/sbin/heartbeat

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/heartbeat.service "$ROOT/etc/systemd/system/multi-user.target.wants/heartbeat.service"
# Faster boots under TCG (every unit costs seconds there): nothing the tests use needs these. The journal
# stays in memory; logind and utmp serve logins, which nobody makes.
for u in e2scrub_all.timer e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer fstrim.timer \
  systemd-timesyncd.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
  systemd-random-seed.service systemd-logind.service systemd-journal-flush.service; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done
sed -i 's/^#\?Storage=.*/Storage=volatile/' "$ROOT/etc/systemd/journald.conf"
ln -sf /lib/systemd/system/multi-user.target "$ROOT/etc/systemd/system/default.target"
# A small initrd: only what mounting root=/dev/vda needs (saves seconds per boot under TCG).
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$ROOT/etc/initramfs-tools/modules"
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | head -n1)")
step "initrd for $KVER"
chroot "$ROOT" update-initramfs -u -k "$KVER" >/dev/null
# Kernel versions change with the mirror: take whatever /boot holds.
cp "$(ls "$ROOT"/boot/vmlinuz-* | head -n1)" "$OUT/vmlinuz"
cp "$(ls "$ROOT"/boot/initrd.img-* | head -n1)" "$OUT/initrd.img"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd.img"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*

step "root filesystem"
mkfs.ext4 -q -L labroot -d "$ROOT" "$WORK/root.raw" 1G
qemu-img convert -q -f raw -O qcow2 "$WORK/root.raw" "$OUT/root.qcow2"
mkdir -p "$WORK/data" && touch "$WORK/data/.labdata"
mkfs.ext4 -q -L labdata -d "$WORK/data" "$WORK/data.raw" 64M
qemu-img convert -q -f raw -O qcow2 "$WORK/data.raw" "$OUT/data.qcow2"
t_total=$(( $(date +%s) - t0 ))

cat > "$OUT/info.json" <<EOF
{"kernel": "$KVER", "mirror": "$MIRROR", "rootQcow2Bytes": $(stat -c %s "$OUT/root.qcow2"), "initrdBytes": $(stat -c %s "$OUT/initrd.img"), "debootstrapSeconds": $t_debootstrap, "totalSeconds": $t_total, "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF
rm -rf "$WORK"
step "done: $(cat "$OUT/info.json")"
