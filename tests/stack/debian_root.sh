#!/usr/bin/env bash
# Another Debian release's Python for the test layers that need it: the service on Debian 11 (Python 3.9,
# as on RHEL 9) and Debian 13 (Python 3.13), and ansible-core 2.20+ (which needs Python >= 3.12).
#
#   debian_root.sh build SUITE        debootstrap SUITE once per machine into a cached tarball
#   debian_root.sh run SUITE CMD...   run CMD in a throw-away root unpacked from it, in this repository (bound at
#                                     its own path); DEBIAN_ROOT_HOST_TMP=1 also binds this machine's /tmp and
#                                     libvirtd socket. Only HOME, LANG and PATH are set: pass others with
#                                     `env NAME=VALUE CMD...`
#
# The root has the distribution's python3, python3-venv and python3-libvirt (the service uses the
# distribution's libvirt binding, never one built from PyPI), git and ca-certificates. Packages come
# from the debootstrap client's default mirror; PyPI is reached from inside as from here.
set -euo pipefail
cache=${MEMDUMP_STACK_KERNEL_CACHE:-/var/cache/memdump-stack}
packages=ca-certificates,git,openssh-client,openssl,python3,python3-venv,python3-libvirt

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
mounts=()
cleanup() {
  [ -n "$run_root" ] || return 0
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -R -l "$run_root${mounts[i]}" 2>/dev/null || true; done
  # A bind mount (this repository, /tmp) is on the same file system as the root, so --one-file-system alone would
  # not stop rm at it: remove nothing while anything is still mounted in the root.
  if grep -q " $run_root/" /proc/self/mounts; then
    log "$run_root still has mounts; not removing it"; return 0
  fi
  rm -rf --one-file-system "$run_root"
}

bind() {  # source target [mount options...]
  local src=$1 dst=$2; shift 2
  mkdir -p "$run_root$dst"
  mount "$@" "$src" "$run_root$dst"
  mounts+=("$dst")
}

cmd_run() {  # suite cmd...
  local suite=$1 repo common; shift
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  cmd_build "$suite"
  run_root=$(mktemp -d /var/tmp/memdump-debian-root.XXXXXX)
  trap cleanup EXIT
  tar -C "$run_root" -xzf "$(tarball "$suite")"
  bind proc /proc -t proc
  bind /sys /sys --rbind
  bind /dev /dev --rbind
  bind tmpfs /run -t tmpfs
  if [ "${DEBIAN_ROOT_HOST_TMP:-0}" = 1 ]; then
    # The stack's files and the libvirtd of this machine: a service in the root asks that libvirtd for dumps,
    # and libvirtd writes them to paths that must be the same inside the root and outside.
    bind /tmp /tmp --bind
    [ -d /run/libvirt ] && bind /run/libvirt /run/libvirt --bind
  else
    bind tmpfs /tmp -t tmpfs
  fi
  # At its own path, so paths in results, collection links and the stack's env mean the same inside and out.
  bind "$repo" "$repo" --bind
  # A git worktree's repository lives elsewhere (its .git is a file naming it): git in the root needs it too.
  common=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) || common=""
  case $common in ""|"$repo"/*) ;; *) bind "$common" "$common" --bind -o ro ;; esac
  cp /etc/resolv.conf "$run_root/etc/resolv.conf"
  # This machine may reach the registries through its own certificate authority.
  cp /etc/ssl/certs/ca-certificates.crt "$run_root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$run_root/etc/pip.conf"
  # shellcheck disable=SC2016  # expanded by the shell in the root
  chroot "$run_root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c 'cd "$0" && "$@"' "$repo" "$@"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: $0 build SUITE | run SUITE CMD..." >&2; exit 2 ;;
esac
