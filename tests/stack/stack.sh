#!/usr/bin/env bash
# One implementation of "install, bring up and tear down" the real components that tests, demo
# and benchmarks need: libvirtd + virtlogd (no systemd), tiny TCG guests, and InfluxDB 1.x on loopback.
#
#   stack.sh install [test]  apt packages + the project venv (.venv), idempotent ("test": no QEMU/libvirtd)
#   stack.sh up [test]    start everything ("test": libvirt's test driver only, no hypervisor)
#   stack.sh down         stop what `up` started, by PID, and undefine its guests
#   stack.sh env          print the environment file that `up` wrote
#   stack.sh bench-up     (benchmarks, after `up`) extra guests named memdump-bench-*: one 1 GiB guest
#                         whose RAM QEMU's loader fills with random bytes, two plain 1 GiB guests and
#                         a 256 MiB one; writes $MEMDUMP_STACK_DIR/bench-env
#   stack.sh bench-down   remove only what bench-up created
#   stack.sh linux-up     (part of `up` for qemu) a 512 MiB guest running Debian's kernel and a busybox
#                         initramfs that keeps a per-boot marker in tmpfs; appends its exports to env
#   stack.sh systemd-host-up    (part of `up` for qemu when MEMDUMP_STACK_SYSTEMD_HOST=1, as `make test`
#                         sets it) a real systemd host: Debian 12 booted with systemd-nspawn, with
#                         libvirtd, polkitd, sshd on 127.0.0.1 and a tiny guest
#   stack.sh systemd-host-down  power it off and remove it (`down` does this too)
#   stack.sh convert-up   (tests and bench of the stream-to-ELF converter, after `up`) Linux guests named
#                         memdump-convert-*: a 4608 MiB `pc` one and a 3 GiB two-node `q35` one, each with
#                         known blobs placed by QEMU's loader below and above 4 GiB, and a 1 GiB `pc` one
#                         that keeps rewriting 64 MiB; writes $MEMDUMP_STACK_DIR/convert-env
#   stack.sh convert-down remove only what convert-up created
#   stack.sh fleet-up     (part of `up` for qemu when MEMDUMP_STACK_SYSTEMD_HOST=1) hypervisors apart from this
#                         machine: Debian 11, 12 and 13 booted with systemd-nspawn, each in its own network
#                         namespace (198.18.<release>.2, no route out), with sshd, libvirtd and a tiny guest;
#                         writes $MEMDUMP_STACK_DIR/fleet.json
#   stack.sh fleet-down   power them off and remove them (`down` does this too)
#
# `up` writes $MEMDUMP_STACK_DIR/env (shell exports) describing what runs where.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stack_dir=${MEMDUMP_STACK_DIR:-/tmp/memdump-stack}
venv=${MEMDUMP_VENV:-$repo/.venv}
# Debian's interpreter, the one python3-libvirt is built for (not a python3 that happens to be first on PATH).
python=${MEMDUMP_PYTHON:-/usr/bin/python3}
# Every program that the tests, the demo and the benchmarks call: nothing is assumed on the machine.
# libvirt-python is Debian's python3-libvirt (built for the host's libvirt, no compiler needed),
# seen through a venv with system site packages, as the service role does on real hosts.
apt_packages=(python3 python3-venv python3-libvirt libvirt-clients influxdb influxdb-client
  binutils shellcheck curl openssl openssh-client git tar systemd procps)
# Only the real-hypervisor backend needs these (`install test` leaves them out: no QEMU, no libvirtd).
hypervisor_packages=(libvirt-daemon-system qemu-system-x86 qemu-utils cpio busybox-static debootstrap systemd-container)
guest_prefix=${MEMDUMP_STACK_GUEST_PREFIX:-memdump-ci}
influx_port=${MEMDUMP_STACK_INFLUX_PORT:-18086}
influx_auth_port=${MEMDUMP_STACK_INFLUX_AUTH_PORT:-18096}
marker_addr=0x04000000   # 64 MiB: inside the tiny guest's RAM, above what SeaBIOS touches
# Debian's kernel, downloaded and extracted once per machine (not per `up`).
kernel_cache=${MEMDUMP_STACK_KERNEL_CACHE:-/var/cache/memdump-stack}

log() { printf '[stack] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "this step needs root (apt-get, libvirtd): run as root, e.g. 'sudo make test'"
    exit 1
  fi
}

cmd_install() {  # [qemu|test]
  local missing=() wanted=("${apt_packages[@]}")
  [ "${1:-qemu}" = test ] || wanted+=("${hypervisor_packages[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    need_root
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Rebuild the venv only when the locked requirements change.
  local stamp want
  want=$(cat "$repo/tests/requirements.lock" "$repo/service/pyproject.toml" <(echo "$python") | sha256sum | cut -c1-16)
  stamp=$(cat "$venv/.memdump-stamp" 2>/dev/null || true)
  if [ "$stamp" != "$want" ]; then
    log "creating the virtual environment $venv from tests/requirements.lock (pip's output: $venv/install.log)"
    rm -rf "$venv"
    "$python" -m venv --system-site-packages "$venv" || { log "cannot create a venv with $python (python3-venv missing?)"; exit 1; }
    {
      "$venv/bin/pip" install --require-hashes --only-binary :all: -r "$repo/tests/requirements.lock" &&
      # The service itself, editable; its dependencies and build backend came from the lock above.
      "$venv/bin/pip" install --no-deps --no-build-isolation -e "$repo/service"
    } > "$venv/install.log" 2>&1 || { tail -30 "$venv/install.log" >&2; log "venv install failed (see $venv/install.log)"; exit 1; }
    "$venv/bin/python" -c 'import ansible, pytest, libvirt, memdump_service' || { log "venv install failed"; exit 1; }
    echo "$want" > "$venv/.memdump-stamp"
  fi
  install_ansible_test_pip
}

install_ansible_test_pip() {
  # ansible-test downloads a get-pip script from a host that is not reachable here: give it a
  # stand-in that installs the pip wheel it asks for, fetched from PyPI.
  local ver cache=~/.ansible/test/cache
  ver=$("$venv/bin/python" -c 'import sys; from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type("P", (), {"version": "%d.%d" % sys.version_info[:2]})())["pip"])')
  mkdir -p "$cache"
  if [ ! -f "$cache/pip-$ver-py3-none-any.whl" ]; then
    "$venv/bin/pip" download -q --no-deps -d "$cache" "pip==$ver" 2>&1 | grep -v "is ignored" || true
  fi
  cp "$repo/tests/stack/get_pip_standin.py" "$cache/get_pip_${ver//./_}.py"
}

pidfile_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_libvirtd() {
  # A root-only /dev/kvm makes libvirt re-probe QEMU on every define (~40 s each).
  if [ -c /dev/kvm ]; then
    chgrp kvm /dev/kvm 2>/dev/null || true
    chmod 0660 /dev/kvm 2>/dev/null || true
  fi
  # QEMU runs as libvirt-qemu and must reach its own files: a root directory of mode 0700 (as some
  # chroot builders leave it) makes libvirt fail with "Cannot find suitable emulator for x86_64".
  if [ $((0$(stat -c %a /) & 1)) = 0 ]; then
    log "/ is mode $(stat -c %a /): QEMU (user libvirt-qemu) could not reach its files; making it traversable (o+x)"
    chmod o+x /
  fi
  if [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1; then
    log "using the libvirtd that is already running"
    return
  fi
  mkdir -p /run/libvirt
  /usr/sbin/virtlogd -d -p "$stack_dir/virtlogd.pid"
  /usr/sbin/libvirtd -d -p "$stack_dir/libvirtd.pid"
  for _ in $(seq 1 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
  # The first call probes QEMU's capabilities (~12 s on a fresh machine).
  virsh -c qemu:///system version >/dev/null
}

guest_xml() {  # name mem_mib [marker_file [load_addr]]
  local loader=""
  if [ -n "${3:-}" ]; then
    loader="<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='loader,file=$3,addr=${4:-$marker_addr},force-raw=on'/></qemu:commandline>"
  fi
  cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$1</name>
  <memory unit='MiB'>$2</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
  $loader
</domain>
XML
}

start_guest() {  # name mem_mib [marker_file [load_addr]]
  local name=$1
  virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine "$name" >/dev/null 2>&1 || true
  guest_xml "$@" > "$stack_dir/$name.xml"
  virsh -c qemu:///system define "$stack_dir/$name.xml" >/dev/null
  virsh -c qemu:///system start "$name" >/dev/null
  echo "$name" >> "$stack_dir/guests"
}

write_test_driver_node() {
  # libvirt's test driver: each connection gets a fresh copy of these domains (good isolation).
  cat > "$stack_dir/test-node.xml" <<XML
<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <domain type='test'><name>web01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e1901</uuid><memory>131072</memory><os><type>hvm</type></os></domain>
  <domain type='test'><name>db01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e1902</uuid><memory>131072</memory><os><type>hvm</type></os></domain>
  <domain type='test'><name>app01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e1903</uuid><memory>131072</memory><os><type>hvm</type></os></domain>
  <domain type='test'><name>stopped01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e1904</uuid><memory>131072</memory><os><type>hvm</type></os>
    <test:runstate>5</test:runstate></domain>
</node>
XML
}

start_influxdb() {  # name port auth(true|false)
  local name=$1 port=$2 auth=$3 dir="$stack_dir/$1"
  mkdir -p "$dir"
  cat > "$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$((port + 2))"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:$port"
  auth-enabled = $auth
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
CONF
  influxd -config "$dir/influxdb.conf" > "$dir/influxd.log" 2>&1 &
  echo $! > "$stack_dir/$name.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "InfluxDB $name did not answer on 127.0.0.1:$port; see $dir/influxd.log"
  exit 1
}

cmd_up() {
  local backend=${1:-qemu}
  mkdir -p "$stack_dir"
  chmod 0755 "$stack_dir"
  : > "$stack_dir/guests"
  write_test_driver_node
  local env="$stack_dir/env"
  {
    echo "export MEMDUMP_STACK_DIR='$stack_dir'"
    echo "export MEMDUMP_TEST_DRIVER_URI='test://$stack_dir/test-node.xml'"
    echo "export MEMDUMP_TEST_DRIVER_VMS='web01 db01 app01'"
  } > "$env"

  if [ "$backend" = qemu ]; then
    need_root
    start_libvirtd
    # Known bytes placed in guest RAM at boot by QEMU's loader: tests find them in the image.
    head -c 4096 /dev/urandom > "$stack_dir/marker.bin"
    printf 'MEMDUMP-CI-MARKER' | dd of="$stack_dir/marker.bin" conv=notrunc status=none
    chmod 0644 "$stack_dir/marker.bin"
    start_guest "$guest_prefix-tiny" 128 "$stack_dir/marker.bin"
    start_guest "$guest_prefix-tiny2" 128
    start_guest "$guest_prefix-large" "${MEMDUMP_STACK_LARGE_MIB:-2048}"
    {
      echo "export MEMDUMP_TEST_LIBVIRT_URI='qemu:///system'"
      echo "export MEMDUMP_TEST_VM='$guest_prefix-tiny'"
      echo "export MEMDUMP_TEST_VM2='$guest_prefix-tiny2'"
      echo "export MEMDUMP_TEST_VM_LARGE='$guest_prefix-large'"
      echo "export MEMDUMP_TEST_VM_MIB=128"
      echo "export MEMDUMP_TEST_VM_LARGE_MIB=${MEMDUMP_STACK_LARGE_MIB:-2048}"
      echo "export MEMDUMP_TEST_MARKER_FILE='$stack_dir/marker.bin'"
      echo "export MEMDUMP_TEST_MARKER_ADDR=$marker_addr"
    } >> "$env"
    cmd_linux_up
    # The systemd host costs a few minutes and ~1.6 GB: the test run asks for it, the demo and benchmarks do not.
    # Where nspawn cannot boot a container (seen inside a chroot), the rest of the stack still serves: the tests
    # that need the systemd host skip, naming why.
    if [ "${MEMDUMP_STACK_SYSTEMD_HOST:-0}" = 1 ] && ! (cmd_systemd_host_up); then
      log "the systemd host is not available; the end of $stack_dir/systemd-host.log:"
      tail -n 25 "$stack_dir/systemd-host.log" >&2 2>/dev/null || true
      (cmd_systemd_host_down) || true
      echo "export MEMDUMP_SYSTEMD_HOST_UNAVAILABLE='systemd-nspawn could not boot the systemd host here (see the stack log)'" >> "$env"
    fi
    # The fleet (hypervisors apart from this machine) comes with the systemd host; a host that cannot boot is
    # recorded as unavailable in fleet.json, and its tests skip naming why.
    if [ "${MEMDUMP_STACK_SYSTEMD_HOST:-0}" = 1 ] && ! (cmd_fleet_up); then
      log "the fleet could not be brought up; its tests skip"
      (cmd_fleet_down) || true
      echo "export MEMDUMP_FLEET_UNAVAILABLE='the fleet could not be brought up here (see the stack log)'" >> "$env"
    fi
  fi

  start_influxdb influxdb "$influx_port" false
  start_influxdb influxdb-auth "$influx_auth_port" true
  # The first admin of an auth-enabled InfluxDB may be created without credentials.
  curl -fsS -XPOST "http://127.0.0.1:$influx_auth_port/query" \
    --data-urlencode "q=CREATE USER memdump WITH PASSWORD 'memdump-ci-secret' WITH ALL PRIVILEGES" >/dev/null
  {
    echo "export MEMDUMP_TEST_INFLUXDB_URL='http://127.0.0.1:$influx_port'"
    echo "export MEMDUMP_TEST_INFLUXDB_AUTH_URL='http://127.0.0.1:$influx_auth_port'"
    echo "export MEMDUMP_TEST_INFLUXDB_USERNAME='memdump'"
    echo "export MEMDUMP_TEST_INFLUXDB_PASSWORD='memdump-ci-secret'"
    echo "export MEMDUMP_TEST_INFLUXDB_PIDFILE='$stack_dir/influxdb.pid'"
    echo "export MEMDUMP_TEST_INFLUXDB_CONF='$stack_dir/influxdb/influxdb.conf'"
  } >> "$env"
  log "up: $(wc -l < "$stack_dir/guests") guest(s), InfluxDB on 127.0.0.1:$influx_port and :$influx_auth_port (auth)"
}

stop_pid() {  # pidfile
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

cmd_down() {
  [ -d "$stack_dir" ] || return 0
  cmd_systemd_host_down
  cmd_convert_down
  cmd_fleet_down
  if [ -f "$stack_dir/guests" ]; then
    while read -r g; do
      [ -n "$g" ] || continue
      virsh -c qemu:///system destroy "$g" >/dev/null 2>&1 || true
      virsh -c qemu:///system undefine "$g" >/dev/null 2>&1 || true
    done < "$stack_dir/guests"
  fi
  # Anything else a test started and registered here (services, listeners).
  for pf in "$stack_dir"/*.pid "$stack_dir"/extra/*.pid; do
    case "$pf" in *libvirtd.pid|*virtlogd.pid) continue ;; esac
    stop_pid "$pf"
  done
  stop_pid "$stack_dir/libvirtd.pid"
  stop_pid "$stack_dir/virtlogd.pid"
  rm -rf "$stack_dir"
  log "down"
}

cached_kernel() {  # prints the path of a cached Debian kernel, downloading it the first time
  local kernels=("$kernel_cache"/vmlinuz-*)
  if [ ! -f "${kernels[0]}" ]; then
    local tmp pkg
    tmp=$(mktemp -d)
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    log "downloading Debian's kernel $pkg (once; cached in $kernel_cache)"
    (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null) || { log "apt-get download $pkg failed"; rm -rf "$tmp"; exit 1; }
    # Only the kernel image: the modules are not needed by a busybox initramfs.
    dpkg-deb --fsys-tarfile "$tmp"/"$pkg"_*.deb | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
    mkdir -p "$kernel_cache"
    chmod 0755 "$kernel_cache"
    install -m 0644 "$tmp"/boot/vmlinuz-* "$kernel_cache/"
    rm -rf "$tmp"
    kernels=("$kernel_cache"/vmlinuz-*)
  fi
  echo "${kernels[0]}"
}

build_linux_initramfs() {  # out
  local root="$stack_dir/linux-initramfs"
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/run"
  cp /bin/busybox "$root/bin/busybox"
  # The marker is made at boot (from the boot id), so it is in the image only if the guest's RAM is.
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
echo "MEMDUMP-LINUX-MARKER-$(cat /proc/sys/kernel/random/boot_id)" > /run/marker
# memdump.writer=1 on the kernel command line (bench P7): keep rewriting 64 MiB of random bytes in
# tmpfs, so that the guest dirties memory all the time, as a busy production guest does.
if grep -q 'memdump.writer=1' /proc/cmdline; then
  (while :; do head -c 67108864 /dev/urandom > /run/writer.tmp; done) &
fi
# memdump.heartbeat=1 (bench P7): write to the second serial port without pause, so that the host, timing what
# arrives, sees every pause of the guest's vCPUs as a gap.
if grep -q 'memdump.heartbeat=1' /proc/cmdline; then
  (while :; do echo -n .; done > /dev/ttyS1) &
fi
echo "READY $(cat /run/marker)" > /dev/ttyS0
while :; do sleep 3600; done
INIT
  chmod 0755 "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$1"
  chmod 0644 "$1"
  rm -rf "$root"
}

cmd_linux_up() {
  need_root
  [ -f "$stack_dir/env" ] || { log "linux-up needs a running stack: run '$0 up' first"; exit 1; }
  local name="$guest_prefix-linux" kernel initrd="$stack_dir/linux-initrd.gz" console="$stack_dir/linux-console.log" line=""
  kernel=$(cached_kernel) || exit 1  # its own exit ends only the command substitution
  build_linux_initramfs "$initrd"
  virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine "$name" >/dev/null 2>&1 || true
  rm -f "$console"
  cat > "$stack_dir/$name.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$kernel</kernel><initrd>$initrd</initrd>
    <cmdline>console=ttyS0 quiet</cmdline></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='$console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh -c qemu:///system define "$stack_dir/$name.xml" >/dev/null
  virsh -c qemu:///system start "$name" >/dev/null
  grep -qxF "$name" "$stack_dir/guests" || echo "$name" >> "$stack_dir/guests"
  local started=$SECONDS
  while [ $((SECONDS - started)) -lt 120 ]; do
    line=$(grep -ao 'READY MEMDUMP-LINUX-MARKER-[0-9a-f-]*' "$console" 2>/dev/null | head -1 || true)
    [ -n "$line" ] && break
    sleep 0.5
  done
  [ -n "$line" ] || { log "the Linux guest $name did not print READY within 120 s; see $console"; exit 1; }
  # Replace the exports of an earlier linux-up, keep the rest of env.
  grep -v '^export MEMDUMP_TEST_LINUX_' "$stack_dir/env" > "$stack_dir/env.tmp" || true
  {
    echo "export MEMDUMP_TEST_LINUX_VM='$name'"
    echo "export MEMDUMP_TEST_LINUX_MIB=512"
    echo "export MEMDUMP_TEST_LINUX_MARKER='${line#READY }'"
  } >> "$stack_dir/env.tmp"
  mv "$stack_dir/env.tmp" "$stack_dir/env"
  log "linux-up: $name ready after $((SECONDS - started)) s"
}

# The systemd host: a Debian 12 root booted by systemd-nspawn. It shares this machine's network, so its
# sshd (and any service the role starts in it) listens on this machine's loopback.
sd_name=${guest_prefix}-systemd-host
sd_root=${MEMDUMP_STACK_SYSTEMD_ROOT:-/var/tmp/$sd_name}
sd_ssh_port=${MEMDUMP_STACK_SYSTEMD_SSH_PORT:-15922}
sd_packages=(libvirt-daemon-system qemu-system-x86 sudo openssh-server)

sd_leader() { pgrep -P "$(cat "$stack_dir/systemd-host.pid")" | head -1; }
sd_run() { nsenter -t "$(sd_leader)" -a "$@"; }

cached_systemd_host() {  # prints the path of a prepared root tarball, building it the first time (~2 min)
  local key tarball tmp
  key=$(echo "bookworm ${sd_packages[*]} cgroup_controllers=[]" | sha256sum | cut -c1-12)
  tarball=$kernel_cache/systemd-host-bookworm-$key.tgz
  if [ ! -s "$tarball" ]; then
    mkdir -p "$kernel_cache"
    tmp=$(mktemp -d /var/tmp/memdump-systemd-host-build.XXXXXX)
    chmod 0755 "$tmp"   # the container's / (mktemp's 0700 would lock out every user but root: dbus, polkitd, QEMU)
    log "building the systemd host's root file system (debootstrap + libvirt; once per machine)"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,python3,iproute2 \
      bookworm "$tmp" > "$kernel_cache/systemd-host-debootstrap.log" 2>&1 \
      || { log "debootstrap failed: see $kernel_cache/systemd-host-debootstrap.log"; rm -rf --one-file-system "$tmp"; exit 1; }
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
    mount -t proc proc "$tmp/proc"
    chroot "$tmp" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${sd_packages[*]}" \
      > "$kernel_cache/systemd-host-apt.log" 2>&1 || { umount "$tmp/proc"; log "apt-get in the systemd host failed: see $kernel_cache/systemd-host-apt.log"; exit 1; }
    umount "$tmp/proc"
    # The container's cgroup tree is read-only: QEMU guests do not start unless libvirt leaves cgroups alone.
    sed -i 's/^#\?cgroup_controllers = .*/cgroup_controllers = [ ]/' "$tmp/etc/libvirt/qemu.conf"
    chroot "$tmp" apt-get clean
    tar -C "$tmp" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$tmp"
  fi
  echo "$tarball"
}

cmd_systemd_host_up() {
  need_root
  [ -f "$stack_dir/env" ] || { log "systemd-host-up needs a running stack: run '$0 up' first"; exit 1; }
  local tarball key="$stack_dir/systemd-host-key" started state=""
  if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    log "systemd-nspawn or debootstrap is missing: run '$0 install'"; exit 1
  fi
  cmd_systemd_host_down
  tarball=$(cached_systemd_host) || exit 1
  mkdir -p "$sd_root"
  tar -C "$sd_root" -xzf "$tarball"
  chmod 0755 "$sd_root"
  echo "$sd_root" > "$stack_dir/systemd-host.root"
  # What this machine uses to reach the registries (resolver, its certificate authority, pip's settings).
  cp /etc/resolv.conf "$sd_root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$sd_root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$sd_root/etc/pip.conf"
  rm -f "$key" "$key.pub"
  ssh-keygen -q -t ed25519 -N '' -C memdump-systemd-host -f "$key"
  install -d -m 0700 "$sd_root/root/.ssh"
  install -m 0600 "$key.pub" "$sd_root/root/.ssh/authorized_keys"
  printf 'Port %s\nListenAddress 127.0.0.1\nPasswordAuthentication no\n' "$sd_ssh_port" > "$sd_root/etc/ssh/sshd_config.d/memdump-stack.conf"
  started=$SECONDS
  setsid systemd-nspawn -D "$sd_root" --boot --register=no --keep-unit --machine="$sd_name" --capability=all \
    > "$stack_dir/systemd-host.log" 2>&1 < /dev/null &
  echo $! > "$stack_dir/systemd-host.pid"
  while [ $((SECONDS - started)) -lt 90 ]; do
    if [ -n "$(sd_leader)" ]; then
      state=$(sd_run systemctl is-system-running 2>/dev/null || true)
      case $state in running|degraded) break ;; esac
    fi
    pidfile_alive "$stack_dir/systemd-host.pid" || { log "systemd-nspawn exited: see $stack_dir/systemd-host.log"; exit 1; }
    sleep 1
  done
  case $state in running|degraded) ;; *) log "the systemd host did not boot within 90 s (state '$state'): see $stack_dir/systemd-host.log"; exit 1 ;; esac
  guest_xml "$sd_name-tiny" 64 > "$sd_root/root/guest.xml"
  sd_run virsh -c qemu:///system define /root/guest.xml >/dev/null
  sd_run virsh -c qemu:///system start "$sd_name-tiny" >/dev/null
  for _ in $(seq 1 50); do
    ssh -q -i "$key" -p "$sd_ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      root@127.0.0.1 true 2>/dev/null && break
    sleep 0.2
  done
  grep -v '^export MEMDUMP_SYSTEMD_HOST_' "$stack_dir/env" > "$stack_dir/env.tmp" || true
  {
    echo "export MEMDUMP_SYSTEMD_HOST_SSH_PORT=$sd_ssh_port"
    echo "export MEMDUMP_SYSTEMD_HOST_SSH_KEY='$key'"
    echo "export MEMDUMP_SYSTEMD_HOST_VM='$sd_name-tiny'"
    echo "export MEMDUMP_SYSTEMD_HOST_VM_MIB=64"
  } >> "$stack_dir/env.tmp"
  mv "$stack_dir/env.tmp" "$stack_dir/env"
  log "systemd-host-up: $sd_name ($state, libvirtd and sshd on 127.0.0.1:$sd_ssh_port) after $((SECONDS - started)) s"
}

cmd_systemd_host_down() {
  local root
  [ -f "$stack_dir/systemd-host.root" ] || return 0
  root=$(cat "$stack_dir/systemd-host.root")
  if pidfile_alive "$stack_dir/systemd-host.pid"; then
    sd_run systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do pidfile_alive "$stack_dir/systemd-host.pid" || break; sleep 0.1; done
  fi
  stop_pid "$stack_dir/systemd-host.pid"
  case $root in /var/tmp/?*) rm -rf --one-file-system "$root" ;; *) log "left $root in place (not under /var/tmp)" ;; esac
  rm -f "$stack_dir/systemd-host.root"
  if [ -f "$stack_dir/env" ]; then
    grep -v '^export MEMDUMP_SYSTEMD_HOST_' "$stack_dir/env" > "$stack_dir/env.tmp" || true
    mv "$stack_dir/env.tmp" "$stack_dir/env"
  fi
  log "systemd-host-down"
}

# The fleet: hypervisors apart from this machine (the controller). Each is a Debian root booted by systemd-nspawn
# with its own network namespace (--network-veth): 198.18.<release>.2 inside, .1 on this side, no default route
# and no NAT, so nothing inside reaches a package registry, as on an air-gapped hypervisor. The roots are built
# once per machine (with this machine's network) and cached; a host that cannot boot is recorded as unavailable
# in fleet.json, so that its tests skip with the reason.
read -ra fleet_suites <<< "${MEMDUMP_STACK_FLEET_SUITES:-bullseye bookworm trixie}"
fleet_prefix=${MEMDUMP_STACK_FLEET_PREFIX:-hv-}
# First two octets of the fleet's addresses (198.18.0.0/15 is for benchmarks and tests, RFC 2544).
fleet_net=${MEMDUMP_STACK_FLEET_NET:-198.18}
# What a hypervisor brings from its own repositories before the deploy (the README's list), plus sshd, sudo
# and an active nftables firewall that drops what it does not allow.
fleet_packages=(libvirt-daemon-system qemu-system-x86 python3-libvirt python3-venv python3-packaging
  openssh-server sudo nftables)

declare -A fleet_release=([bullseye]=11 [bookworm]=12 [trixie]=13)

fleet_pid() { cat "$stack_dir/fleet-$1.pid" 2>/dev/null; }
fleet_leader() { pgrep -P "$(fleet_pid "$1")" 2>/dev/null | head -1; }
fleet_run() { local host=$1; shift; nsenter -t "$(fleet_leader "$host")" -a "$@"; }

fleet_boot_wait() {  # host pidfile log seconds: wait for systemd inside to finish booting
  local host=$1 started=$SECONDS state=""
  while [ $((SECONDS - started)) -lt "$4" ]; do
    if [ -n "$(pgrep -P "$(cat "$2")" 2>/dev/null | head -1)" ]; then
      state=$(nsenter -t "$(pgrep -P "$(cat "$2")" | head -1)" -a systemctl is-system-running 2>/dev/null || true)
      case $state in running|degraded) echo "$state"; return 0 ;; esac
    fi
    pidfile_alive "$2" || { log "$host: systemd-nspawn exited: see $3"; return 1; }
    sleep 1
  done
  log "$host did not boot within $4 s (state '$state'): see $3"
  return 1
}

cached_fleet_root() {  # suite: prints the path of the suite's prepared root tarball, building it the first time
  local suite=$1 key tarball tmp pidfile logf state
  key=$(echo "$suite ${fleet_packages[*]} no-recommends cgroup_controllers=[] nftables-drop v1" | sha256sum | cut -c1-12)
  tarball=$kernel_cache/fleet-$suite-$key.tgz
  if [ -s "$tarball" ]; then echo "$tarball"; return 0; fi
  mkdir -p "$kernel_cache"
  logf=$kernel_cache/fleet-$suite-build.log
  tmp=$(mktemp -d "/var/tmp/memdump-fleet-build-$suite.XXXXXX")
  chmod 0755 "$tmp"   # the container's /: dbus, polkitd and QEMU run as other users
  log "building the $suite root of the fleet (debootstrap, then libvirt in the booted root; once per machine: $logf)"
  # Step 1: the base. The client's default mirror; libvirt's packages do not configure in a chroot (polkitd).
  if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,python3,iproute2 \
      "$suite" "$tmp" > "$logf" 2>&1; then
    log "debootstrap $suite failed: see $logf"; rm -rf --one-file-system "$tmp"; return 1
  fi
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
  # No daemon starts during the install: the build boots with this machine's network (sshd would take port 22 here).
  printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  # Step 2: boot it with the shared network and install libvirt & co. under a running systemd and dbus.
  pidfile=$stack_dir/fleet-build-$suite.pid
  mkdir -p "$stack_dir"
  setsid systemd-nspawn -D "$tmp" --boot --register=no --keep-unit --machine="memdump-build-$suite" --capability=all \
    >> "$logf" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  if ! state=$(fleet_boot_wait "build-$suite" "$pidfile" "$logf" 120) ||
     ! nsenter -t "$(pgrep -P "$(cat "$pidfile")" | head -1)" -a bash -c \
       "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${fleet_packages[*]} && apt-get clean" \
       >> "$logf" 2>&1; then
    log "installing ${fleet_packages[*]} into the $suite root failed: see $logf"
    nsenter -t "$(pgrep -P "$(cat "$pidfile")" | head -1)" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do pidfile_alive "$pidfile" || break; sleep 0.1; done
    stop_pid "$pidfile"; rm -rf --one-file-system "$tmp"; return 1
  fi
  nsenter -t "$(pgrep -P "$(cat "$pidfile")" | head -1)" -a systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 1 300); do pidfile_alive "$pidfile" || break; sleep 0.1; done
  stop_pid "$pidfile"
  rm -f "$tmp/usr/sbin/policy-rc.d"
  # The container's cgroup tree is read-only: QEMU guests do not start unless libvirt leaves cgroups alone.
  sed -i 's/^#\?\s*cgroup_controllers = .*/cgroup_controllers = [ ]/' "$tmp/etc/libvirt/qemu.conf"
  grep -q '^cgroup_controllers = \[ \]' "$tmp/etc/libvirt/qemu.conf" || echo 'cgroup_controllers = [ ]' >> "$tmp/etc/libvirt/qemu.conf"
  # A host firewall that drops what it does not allow: the service role must open its port.
  cat > "$tmp/etc/nftables.conf" <<'NFT'
#!/usr/sbin/nft -f
flush ruleset
table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
    meta l4proto { icmp, ipv6-icmp } accept
    tcp dport 22 accept
  }
}
NFT
  chroot "$tmp" systemctl enable nftables.service ssh.service >> "$logf" 2>&1
  tar -C "$tmp" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf --one-file-system "$tmp"
  log "the $suite root is built ($(du -h "$tarball" | cut -f1))"
  echo "$tarball"
}

fleet_host_up() {  # suite: boot one host; prints its JSON entry (unavailable: the reason)
  local suite=$1 host=$fleet_prefix$1 rel=${fleet_release[$1]:-} tarball root addr gw veth started state
  local logf=$stack_dir/fleet-$host.log key=$stack_dir/fleet-key
  [ -n "$rel" ] || { log "unknown suite $suite (known: ${!fleet_release[*]})"; return 1; }
  addr=$fleet_net.$rel.2 gw=$fleet_net.$rel.1 veth=ve-$host
  veth=${veth:0:15}
  root=/var/tmp/memdump-fleet-$host
  tarball=$(cached_fleet_root "$suite") || return 1
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  tar -C "$root" -xzf "$tarball"
  chmod 0755 "$root"
  echo "$root" > "$stack_dir/fleet-$host.root"
  # No resolver, no CA bundle of this machine's, no pip configuration: the host reaches nothing but its controller.
  : > "$root/etc/resolv.conf"
  echo "$host" > "$root/etc/hostname"
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$key.pub" "$root/root/.ssh/authorized_keys"
  printf 'PasswordAuthentication no\nUseDNS no\n' > "$root/etc/ssh/sshd_config.d/memdump-stack.conf"
  started=$SECONDS
  setsid systemd-nspawn -D "$root" --boot --register=no --keep-unit --machine="$host" --capability=all \
    --network-veth > "$logf" 2>&1 < /dev/null &
  echo $! > "$stack_dir/fleet-$host.pid"
  state=$(fleet_boot_wait "$host" "$stack_dir/fleet-$host.pid" "$logf" 120) || return 1
  # Addresses on both ends of the veth pair; no default route inside: there is no way out.
  fleet_run "$host" ip addr add "$addr/24" dev host0
  fleet_run "$host" ip link set host0 up
  ip addr add "$gw/24" dev "$veth"
  ip link set "$veth" up
  guest_xml "$host-tiny" 64 > "$root/root/guest.xml"
  fleet_run "$host" virsh -c qemu:///system define /root/guest.xml >/dev/null
  fleet_run "$host" virsh -c qemu:///system start "$host-tiny" >/dev/null
  for _ in $(seq 1 100); do
    ssh -q -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 \
      "root@$addr" true 2>/dev/null && break
    sleep 0.2
  done
  local python
  python=$(fleet_run "$host" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  log "fleet-up: $host ($state, Debian $rel, Python $python) at $addr after $((SECONDS - started)) s"
  printf '{"name": "%s", "suite": "%s", "release": %s, "address": "%s", "controller_address": "%s", "python": "%s", "vm": "%s", "vm_mib": 64}' \
    "$host" "$suite" "$rel" "$addr" "$gw" "$python" "$host-tiny"
}

cmd_fleet_up() {
  need_root
  [ -f "$stack_dir/env" ] || { log "fleet-up needs a running stack: run '$0 up' first"; exit 1; }
  if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    log "systemd-nspawn or debootstrap is missing: run '$0 install'"; exit 1
  fi
  cmd_fleet_down
  local key=$stack_dir/fleet-key suite entry entries=() host pids=()
  # Roots not yet cached are built side by side (mostly downloads; about 5 minutes for all three here).
  for suite in "${fleet_suites[@]}"; do
    cached_fleet_root "$suite" >/dev/null &
    pids+=($!)
  done
  for entry in "${pids[@]}"; do wait "$entry" || true; done
  rm -f "$key" "$key.pub"
  ssh-keygen -q -t ed25519 -N '' -C memdump-fleet -f "$key"
  for suite in "${fleet_suites[@]}"; do
    host=$fleet_prefix$suite
    echo "$host" >> "$stack_dir/fleet-hosts"
    if entry=$(fleet_host_up "$suite"); then
      entries+=("$entry")
    else
      log "$host is not available; the end of its log:"
      tail -n 15 "$stack_dir/fleet-$host.log" >&2 2>/dev/null || true
      fleet_host_down "$host"
      entries+=("$(printf '{"name": "%s", "suite": "%s", "unavailable": "systemd-nspawn could not boot %s here (see %s)"}' \
        "$host" "$suite" "$host" "$stack_dir/fleet-$host.log")")
    fi
  done
  (IFS=,; echo "[${entries[*]}]") > "$stack_dir/fleet.json"
  grep -v '^export MEMDUMP_FLEET_' "$stack_dir/env" > "$stack_dir/env.tmp" || true
  {
    echo "export MEMDUMP_FLEET_FILE='$stack_dir/fleet.json'"
    echo "export MEMDUMP_FLEET_SSH_KEY='$key'"
  } >> "$stack_dir/env.tmp"
  mv "$stack_dir/env.tmp" "$stack_dir/env"
}

fleet_host_down() {  # host
  local host=$1 root
  if pidfile_alive "$stack_dir/fleet-$host.pid"; then
    fleet_run "$host" systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do pidfile_alive "$stack_dir/fleet-$host.pid" || break; sleep 0.1; done
  fi
  stop_pid "$stack_dir/fleet-$host.pid"
  root=$(cat "$stack_dir/fleet-$host.root" 2>/dev/null || true)
  # A last process of the container may still be writing its files for a moment after nspawn exits.
  case $root in /var/tmp/memdump-fleet-?*) rm -rf --one-file-system "$root" 2>/dev/null || { sleep 1; rm -rf --one-file-system "$root"; } ;; esac
  rm -f "$stack_dir/fleet-$host.root"
}

cmd_fleet_down() {
  [ -f "$stack_dir/fleet-hosts" ] || return 0
  local host
  while read -r host; do
    [ -n "$host" ] && fleet_host_down "$host"
  done < "$stack_dir/fleet-hosts"
  rm -f "$stack_dir/fleet-hosts" "$stack_dir/fleet.json" "$stack_dir/fleet-key" "$stack_dir/fleet-key.pub"
  if [ -f "$stack_dir/env" ]; then
    grep -v '^export MEMDUMP_FLEET_' "$stack_dir/env" > "$stack_dir/env.tmp" || true
    mv "$stack_dir/env.tmp" "$stack_dir/env"
  fi
  log "fleet-down"
}

bench_prefix=${MEMDUMP_BENCH_GUEST_PREFIX:-memdump-bench}

cmd_bench_up() {
  # Guests for bench/ only; `up` does not create them. The random guest's RAM is non-zero from
  # 1 MiB up (QEMU's loader copies the file in at boot), so its image cannot be compressed or
  # skipped by anyone; dumps of the others can be slowed with `virsh schedinfo` by the benchmarks.
  need_root
  [ -f "$stack_dir/env" ] || { log "bench-up needs a running stack: run '$0 up' first"; exit 1; }
  local dir="$stack_dir/bench" mib=${MEMDUMP_BENCH_RANDOM_MIB:-1024}
  mkdir -p "$dir"
  chmod 0755 "$dir"
  if [ ! -f "$dir/random.bin" ] || [ "$(stat -c %s "$dir/random.bin")" != $(((mib - 2) * 1048576)) ]; then
    log "writing $((mib - 2)) MiB of random bytes for the loader"
    # AES-CTR over zeros with a random key: random-looking bytes at disk speed (/dev/urandom is slower).
    openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$(head -c 32 /dev/urandom | base64)" < /dev/zero 2>/dev/null \
      | head -c $(((mib - 2) * 1048576)) > "$dir/random.bin" || true
    chmod 0644 "$dir/random.bin"
  fi
  : > "$stack_dir/bench-guests"
  local g name size file
  for g in "$bench_prefix-random:$mib:$dir/random.bin" "$bench_prefix-a:1024:" "$bench_prefix-b:1024:" "$bench_prefix-small:256:"; do
    IFS=: read -r name size file <<< "$g"
    if [ -n "$file" ]; then
      start_guest "$name" "$size" "$file" 0x00100000
    else
      start_guest "$name" "$size"
    fi
    echo "$name" >> "$stack_dir/bench-guests"
  done
  {
    echo "export MEMDUMP_BENCH_VM_RANDOM='$bench_prefix-random'"
    echo "export MEMDUMP_BENCH_VM_RANDOM_MIB=$mib"
    echo "export MEMDUMP_BENCH_RANDOM_FILE='$dir/random.bin'"
    echo "export MEMDUMP_BENCH_VM_A='$bench_prefix-a'"
    echo "export MEMDUMP_BENCH_VM_B='$bench_prefix-b'"
    echo "export MEMDUMP_BENCH_VM_SMALL='$bench_prefix-small'"
  } > "$stack_dir/bench-env"
  log "bench-up: $(wc -l < "$stack_dir/bench-guests") bench guest(s)"
}

cmd_bench_down() {
  [ -f "$stack_dir/bench-guests" ] || return 0
  local g name size file
  while read -r g; do
    [ -n "$g" ] || continue
    virsh -c qemu:///system destroy "$g" >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine "$g" >/dev/null 2>&1 || true
    rm -f "$stack_dir/$g.xml"
    if [ -f "$stack_dir/guests" ]; then
      grep -vxF "$g" "$stack_dir/guests" > "$stack_dir/guests.tmp" || true
      mv "$stack_dir/guests.tmp" "$stack_dir/guests"
    fi
  done < "$stack_dir/bench-guests"
  rm -rf "$stack_dir/bench" "$stack_dir/bench-guests" "$stack_dir/bench-env"
  log "bench-down"
}

convert_prefix=${MEMDUMP_CONVERT_GUEST_PREFIX:-memdump-convert}

convert_guest_xml() {  # name machine mem_mib kernel initrd console cmdline_extra [blob addr]...
  local name=$1 machine=$2 mib=$3 kernel=$4 initrd=$5 console=$6 extra=$7 args="" numa="" vcpus=1
  shift 7
  while [ $# -ge 2 ]; do
    args+="<qemu:arg value='-device'/><qemu:arg value='loader,file=$1,addr=$2,force-raw=on'/>"
    shift 2
  done
  # q35: two NUMA cells, so that the stream carries guest RAM in two blocks (ram-node0, ram-node1).
  if [ "$machine" = q35 ]; then
    vcpus=2
    numa="<cpu><numa><cell id='0' cpus='0' memory='$((mib / 2))' unit='MiB'/><cell id='1' cpus='1' memory='$((mib / 2))' unit='MiB'/></numa></cpu>"
  fi
  cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <memory unit='MiB'>$mib</memory>
  <vcpu>$vcpus</vcpu>
  <os><type arch='x86_64' machine='$machine'>hvm</type><kernel>$kernel</kernel><initrd>$initrd</initrd>
    <cmdline>console=ttyS0 quiet $extra</cmdline></os>
  $numa
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='$console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>$args</qemu:commandline>
</domain>
XML
}

cmd_convert_up() {
  # Guests for the converter's tests and bench P9 only; `up` does not create them. Each blob is 1 MiB of
  # random bytes with its guest-physical address written at its start, so a test finds it where it belongs.
  need_root
  [ -f "$stack_dir/env" ] || { log "convert-up needs a running stack: run '$0 up' first"; exit 1; }
  local dir="$stack_dir/convert" kernel initrd g name machine mib extra blobs started line
  mkdir -p "$dir"
  chmod 0755 "$dir"
  kernel=$(cached_kernel) || exit 1
  initrd="$dir/initrd.gz"
  build_linux_initramfs "$initrd"
  : > "$stack_dir/convert-guests"
  : > "$stack_dir/convert-env"
  # name:machine:MiB:cmdline:addr,addr (pc keeps 3 GiB below the PCI hole; q35 with >= 2.75 GiB keeps 2 GiB)
  for g in "$convert_prefix-pc:pc:4608::0x10000000,0x140000000" \
           "$convert_prefix-q35:q35:3072::0x10000000,0x120000000" \
           "$convert_prefix-busy:pc:1024:memdump.writer=1:"; do
    IFS=: read -r name machine mib extra blobs <<< "$g"
    local loader=() listed=() addr i=0 reserve=""
    for addr in ${blobs//,/ }; do
      # Linux must not reuse the blob's RAM (it did above 4 GiB): memmap=SIZE$ADDR reserves it.
      reserve+=" memmap=1M\$$addr"
      { printf 'MEMDUMP-CONVERT-BLOB %s %s\n' "$name" "$addr"; head -c 1048576 /dev/urandom; } | head -c 1048576 > "$dir/$name-blob$i.bin"
      chmod 0644 "$dir/$name-blob$i.bin"
      loader+=("$dir/$name-blob$i.bin" "$addr")
      listed+=("$dir/$name-blob$i.bin:$addr")
      i=$((i + 1))
    done
    # "file:address file:address" of the blobs the loader put into this guest.
    echo "export MEMDUMP_CONVERT_BLOBS_${name#"$convert_prefix"-}='${listed[*]}'" >> "$stack_dir/convert-env"
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine "$name" >/dev/null 2>&1 || true
    rm -f "$dir/$name-console.log"
    convert_guest_xml "$name" "$machine" "$mib" "$kernel" "$initrd" "$dir/$name-console.log" "$extra$reserve" "${loader[@]}" > "$dir/$name.xml"
    virsh -c qemu:///system define "$dir/$name.xml" >/dev/null
    virsh -c qemu:///system start "$name" >/dev/null
    echo "$name" >> "$stack_dir/convert-guests"
  done
  started=$SECONDS
  while read -r name; do
    line=""
    while [ $((SECONDS - started)) -lt 180 ]; do
      line=$(grep -ao 'READY MEMDUMP-LINUX-MARKER-[0-9a-f-]*' "$dir/$name-console.log" 2>/dev/null | head -1 || true)
      [ -n "$line" ] && break
      sleep 0.5
    done
    [ -n "$line" ] || { log "the guest $name did not print READY within 180 s; see $dir/$name-console.log"; exit 1; }
  done < "$stack_dir/convert-guests"
  {
    echo "export MEMDUMP_CONVERT_VM_PC='$convert_prefix-pc'"
    echo "export MEMDUMP_CONVERT_VM_PC_MIB=4608"
    echo "export MEMDUMP_CONVERT_VM_Q35='$convert_prefix-q35'"
    echo "export MEMDUMP_CONVERT_VM_Q35_MIB=3072"
    echo "export MEMDUMP_CONVERT_VM_BUSY='$convert_prefix-busy'"
    echo "export MEMDUMP_CONVERT_VM_BUSY_MIB=1024"
    echo "export MEMDUMP_CONVERT_DIR='$dir'"
  } >> "$stack_dir/convert-env"
  log "convert-up: $(wc -l < "$stack_dir/convert-guests") guest(s) ready after $((SECONDS - started)) s"
}

cmd_convert_down() {
  [ -f "$stack_dir/convert-guests" ] || return 0
  local name
  while read -r name; do
    [ -n "$name" ] || continue
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine "$name" >/dev/null 2>&1 || true
  done < "$stack_dir/convert-guests"
  rm -rf "$stack_dir/convert" "$stack_dir/convert-guests" "$stack_dir/convert-env"
  log "convert-down"
}

case "${1:-}" in
  install) cmd_install "${2:-qemu}" ;;
  up) cmd_up "${2:-qemu}" ;;
  down) cmd_down ;;
  env) cat "$stack_dir/env" ;;
  bench-up) cmd_bench_up ;;
  bench-down) cmd_bench_down ;;
  convert-up) cmd_convert_up ;;
  convert-down) cmd_convert_down ;;
  linux-up) cmd_linux_up ;;
  systemd-host-up) cmd_systemd_host_up ;;
  systemd-host-down) cmd_systemd_host_down ;;
  fleet-up) cmd_fleet_up ;;
  fleet-down) cmd_fleet_down ;;
  fleet-build) for s in "${fleet_suites[@]}"; do cached_fleet_root "$s" >/dev/null || exit 1; done ;;
  ansible-test-pip) install_ansible_test_pip ;;  # for another venv's ansible-test (MEMDUMP_VENV): tests/run.sh core-*
  *) echo "usage: $0 install|up [qemu|test]|down|env|bench-up|bench-down|convert-up|convert-down|linux-up|systemd-host-up|systemd-host-down|fleet-up|fleet-down|fleet-build" >&2; exit 2 ;;
esac
