#!/usr/bin/env bash
# Another Debian release's Python for the test layers that need it: the service on Debian 11 (Python 3.9,
# as on RHEL 9) and Debian 13 (Python 3.13), and ansible-core 2.20+ (which needs Python >= 3.12).
#
#   debian_root.sh build SUITE        debootstrap SUITE once per machine into a cached tarball
#   debian_root.sh run SUITE CMD...   run CMD in a throw-away root unpacked from it, this repository
#                                     bound read-only at /repo and a writable /out bound to $DEBIAN_ROOT_OUT
#
# The root has the distribution's python3, python3-venv and python3-libvirt (the service uses the
# distribution's libvirt binding, never one built from PyPI), git and ca-certificates. Packages come
# from the debootstrap client's default mirror; PyPI is reached from inside as from here.
set -euo pipefail
cache=${MEMDUMP_STACK_KERNEL_CACHE:-/var/cache/memdump-stack}
packages=ca-certificates,git,openssl,python3,python3-venv,python3-libvirt

log() { printf '[debian-root] %s\n' "$*" >&2; }

tarball() { echo "$cache/debian-root-$1-$(printf '%s' "$packages" | sha256sum | cut -c1-12).tgz"; }

cmd_build() {  # suite
  local suite=$1 tgz tmp
  tgz=$(tarball "$suite")
  [ -s "$tgz" ] && return 0
  [ "$(id -u)" = 0 ] || { log "building a Debian root needs root (debootstrap)"; exit 1; }
  command -v debootstrap >/dev/null || { log "debootstrap is missing: run 'tests/stack/stack.sh install'"; exit 1; }
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/debian-root-$suite.XXXXXX")
  log "debootstrap $suite (once per machine; log: $cache/debian-root-$suite.log)"
  # No mirror argument: the client's default mirror.
  debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" > "$cache/debian-root-$suite.log" 2>&1 \
    || { log "debootstrap $suite failed: see $cache/debian-root-$suite.log"; rm -rf --one-file-system "$tmp"; exit 1; }
  # Written under a temporary name first, so a concurrent or interrupted build never leaves half a tarball.
  tar -C "$tmp" -czf "$tgz.tmp.$$" . && mv "$tgz.tmp.$$" "$tgz"
  rm -rf --one-file-system "$tmp"
}

run_root=""
cleanup() {
  [ -n "$run_root" ] || return 0
  local m
  for m in repo out run tmp dev sys proc; do umount -R -l "$run_root/$m" 2>/dev/null || true; done
  # A bind mount (this repository, the results) is on the same file system as the root, so --one-file-system alone
  # would not stop rm at it: remove nothing while anything is still mounted in the root.
  if grep -q " $run_root/" /proc/self/mounts; then
    log "$run_root still has mounts; not removing it"; return 0
  fi
  rm -rf --one-file-system "$run_root"
}

cmd_run() {  # suite cmd...
  local suite=$1 root repo out; shift
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  cmd_build "$suite"
  root=$(mktemp -d /var/tmp/memdump-debian-root.XXXXXX)
  out=${DEBIAN_ROOT_OUT:-$root/out}
  mkdir -p "$out"
  run_root=$root
  trap cleanup EXIT
  tar -C "$root" -xzf "$(tarball "$suite")"
  mkdir -p "$root/repo" "$root/out" "$root/run"
  mount -t proc proc "$root/proc"; mount --rbind /sys "$root/sys"; mount --rbind /dev "$root/dev"
  mount -t tmpfs tmpfs "$root/tmp"; mount -t tmpfs tmpfs "$root/run"
  mount --bind "$repo" "$root/repo"; mount -o remount,bind,ro "$root/repo"
  mount --bind "$out" "$root/out"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # This machine may reach the registries through its own certificate authority.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c 'cd /out && "$@"' debian-root "$@"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: $0 build SUITE | run SUITE CMD..." >&2; exit 2 ;;
esac
