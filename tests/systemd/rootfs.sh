#!/bin/sh
# Prints the path of a cached Debian 12 minimal root file system for the systemd container test,
# building it with debootstrap first when it is missing. The cache lives outside any checkout
# (CI clones afresh each run) and is keyed by ROOTFS_VERSION: change the version when the package
# list changes. A half-built tree is never used: it is built under a temp name and renamed.
set -eu
ROOTFS_VERSION=bookworm-5
cache=${SENTINEL_ROOTFS_CACHE:-/var/cache/deploy-sentinel-test}
root="$cache/rootfs-$ROOTFS_VERSION"
if [ -x "$root/lib/systemd/systemd" ]; then
  echo "$root"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$cache"
tmp="$root.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
# systemd and dbus to boot; git for the checkout; the sentinel's runtime libraries, so the .deb
# installs without network; procps for the test's own checks.
include=systemd,systemd-sysv,dbus,git,procps,libboost-json1.81.0,libspdlog1.10,libfmt9,libtomlplusplus3,libdate-tz3,tzdata
debootstrap --variant=minbase --include="$include" bookworm "$tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
# polkitd (for the shipped polkit rule) fails to configure inside debootstrap; apt in a chroot
# installs it, and man-db (systemd-analyze verify checks Documentation=man:). Nothing is started
# in the chroot (policy-rc.d); their services start when the container boots.
printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
chroot "$tmp" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends polkitd man-db' >&2
rm -f "$tmp/usr/sbin/policy-rc.d"
rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
mv "$tmp" "$root"
# Older versions of the tree are of no further use.
for old in "$cache"/rootfs-*; do
  case "$old" in "$root" | *.tmp.*) ;; *) rm -rf "$old" ;; esac
done
trap - EXIT
echo "$root"
