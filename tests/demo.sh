#!/usr/bin/env bash
# `make demo` = tests/demo.sh [qemu|test] [--no-stack]
#
# Brings up the stack (libvirtd + tiny QEMU guests + InfluxDB; `test`: libvirt's test driver, no
# hypervisor), starts the memdump service (port 5001 unless busy), runs
# `ansible-playbook vmforensics.memdump.acquire` against localhost for a few VMs with the InfluxDB
# callback enabled and collection on, prints per VM the state, dump path, size, SHA-256 and duration,
# and the records read back from InfluxDB; then stops the service and the stack (also on failure).
#
# --no-stack (or MEMDUMP_DEMO_NO_STACK=1): use an already running stack (tests/stack/stack.sh up)
# and leave it running.
set -uo pipefail

backend=${1:-qemu}
no_stack=${MEMDUMP_DEMO_NO_STACK:-0}
for a in "$@"; do [ "$a" = --no-stack ] && no_stack=1; done
case $backend in qemu|test) ;; --no-stack) backend=qemu ;; *) echo "usage: $0 [qemu|test] [--no-stack]" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEMDUMP_VENV:-$repo/.venv}
stack=$repo/tests/stack/stack.sh
export PATH="$venv/bin:$PATH" ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
work=$(mktemp -d /tmp/memdump-demo.XXXXXX)
# The collected evidence outlives the demo (the service's own copies in $work do not): look at it after.
evidence=${MEMDUMP_DEMO_EVIDENCE_DIR:-$(mktemp -d /tmp/memdump-demo-evidence.XXXXXX)}
service_pid=""
stack_started=0

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [ -n "$service_pid" ] && kill -0 "$service_pid" 2>/dev/null; then
    kill "$service_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$service_pid" 2>/dev/null || true
  fi
  [ -n "${pidfile:-}" ] && rm -f "$pidfile"
  if [ "$stack_started" = 1 ]; then
    say "stopping the stack"
    bash "$stack" down || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- What exists --------------------------------------------------------------------------------
missing=()
[ -f "$repo/service/pyproject.toml" ] || missing+=("the memdump service (service/)")
for m in memdump_trigger memdump_wait; do
  [ -f "$repo/plugins/modules/$m.py" ] || missing+=("module vmforensics.memdump.$m")
done
[ -d "$repo/roles/memdump_acquire" ] || missing+=("role vmforensics.memdump.memdump_acquire")
[ -f "$repo/playbooks/acquire.yml" ] || missing+=("playbook vmforensics.memdump.acquire")
have_callback=1
[ -f "$repo/plugins/callback/influxdb.py" ] || have_callback=0
say "collection pieces"
for f in "$repo"/plugins/modules/*.py "$repo"/plugins/callback/*.py; do
  [ -f "$f" ] && echo "  present: $(basename "$(dirname "$f")")/$(basename "$f")"
done
for d in "$repo"/roles/* "$repo"/playbooks/*.yml; do [ -e "$d" ] && echo "  present: ${d#"$repo"/}"; done
if [ ${#missing[@]} -gt 0 ]; then
  printf '  MISSING: %s\n' "${missing[@]}"
  die "cannot run the acquisition until the missing pieces above exist"
fi
[ "$have_callback" = 1 ] || echo "  MISSING: callback vmforensics.memdump.influxdb (the run is not recorded in InfluxDB)"

# --- Stack --------------------------------------------------------------------------------------
if [ "$no_stack" != 1 ]; then
  say "installing and starting the stack ($backend)"
  bash "$stack" install "$backend" || die "tests/stack/stack.sh install failed (Debian/Ubuntu and root are needed)"
  stack_started=1
  bash "$stack" up "$backend" || die "tests/stack/stack.sh up $backend failed"
fi
env_file=${MEMDUMP_STACK_DIR:-/tmp/memdump-stack}/env
[ -f "$env_file" ] || die "no stack environment at $env_file: run tests/stack/stack.sh up, or drop --no-stack"
# shellcheck disable=SC1090
. "$env_file"
python -c 'import memdump_service' 2>/dev/null || die "memdump_service is not installed in $venv: run tests/stack/stack.sh install"

if [ "$backend" = test ]; then
  libvirt_uri=$MEMDUMP_TEST_DRIVER_URI
  read -r -a vms <<< "${MEMDUMP_TEST_DRIVER_VMS:-web01 db01 app01}"
else
  [ -n "${MEMDUMP_TEST_VM:-}" ] || die "the stack runs without QEMU guests: use 'make demo DEMO_BACKEND=test'"
  libvirt_uri=$MEMDUMP_TEST_LIBVIRT_URI
  vms=("$MEMDUMP_TEST_VM" "$MEMDUMP_TEST_VM2")
fi

# --- Service ------------------------------------------------------------------------------------
port=5001
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "port 5001 is busy: using $port"
fi
token=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')
printf '%s\n' "$token" > "$work/token"; chmod 0600 "$work/token"
say "starting the memdump service on 127.0.0.1:$port (libvirt $libvirt_uri)"
python -m memdump_service --listen "127.0.0.1:$port" --libvirt-uri "$libvirt_uri" --dump-dir "$work/dumps" \
  --state-file "$work/state.sqlite" --token-file "$work/token" > "$work/service.log" 2>&1 &
service_pid=$!
mkdir -p "$MEMDUMP_STACK_DIR/extra"
pidfile=$MEMDUMP_STACK_DIR/extra/demo-service-$service_pid.pid   # `stack.sh down` stops it if we die
echo "$service_pid" > "$pidfile"
url=http://127.0.0.1:$port
for _ in $(seq 1 150); do
  kill -0 "$service_pid" 2>/dev/null || { cat "$work/service.log"; die "the memdump service exited"; }
  curl -s -o /dev/null "$url/health" && break
  sleep 0.2
done
curl -s "$url/health" | python -m json.tool

# --- Acquisition --------------------------------------------------------------------------------
label=DEMO-$(date -u +%Y%m%dT%H%M%S)
collections=$repo/tests/output/collections
mkdir -p "$collections/ansible_collections/vmforensics"
ln -sfn "$repo" "$collections/ansible_collections/vmforensics/memdump"
export ANSIBLE_COLLECTIONS_PATH=$collections MEMDUMP_SERVICE_URL=$url MEMDUMP_SERVICE_TOKEN=$token
influx_db=memdump_demo
if [ "$have_callback" = 1 ] && [ -n "${MEMDUMP_TEST_INFLUXDB_URL:-}" ]; then
  curl -fsS -XPOST "$MEMDUMP_TEST_INFLUXDB_URL/query" --data-urlencode "q=CREATE DATABASE $influx_db" >/dev/null \
    || echo "could not create the InfluxDB database $influx_db at $MEMDUMP_TEST_INFLUXDB_URL"
  export ANSIBLE_CALLBACKS_ENABLED=vmforensics.memdump.influxdb MEMDUMP_INFLUXDB_URL=$MEMDUMP_TEST_INFLUXDB_URL \
    MEMDUMP_INFLUXDB_DATABASE=$influx_db MEMDUMP_INFLUXDB_SPOOL_DIR=$work/spool
fi
# A signing key for the custody log, made for this demo; its public half stays with the evidence,
# in OpenSSH's allowed-signers format, so that the log can be verified later (docs/runbook.md).
ssh-keygen -q -t ed25519 -N '' -C memdump-demo -f "$work/custody_ed25519"
mkdir -p "$evidence"
printf 'demo@memdump namespaces="memdump-custody" %s\n' "$(cat "$work/custody_ed25519.pub")" > "$evidence/allowed_signers"
# The two endpoints are one here: the modules reach the service on the host's loopback (MEMDUMP_SERVICE_URL), and
# the controller downloads from collect_url, which on a real fleet is the host's address with TLS (README).
# evidence_dir is required: evidence goes only where it is told to.
say "ansible-playbook vmforensics.memdump.acquire -e label=$label -e vms=$(IFS=,; echo "${vms[*]}") -e collect=true -e collect_url=$url -e evidence_dir=$evidence -e signing_key=..."
ansible-playbook -i localhost, -c local vmforensics.memdump.acquire \
  -e "ansible_python_interpreter=$venv/bin/python" -e memdump_hosts=localhost -e "label=$label" \
  -e "vms=$(IFS=,; echo "${vms[*]}")" -e collect=true -e "collect_url=$url" -e "evidence_dir=$evidence" -e wait_timeout=600 \
  -e "signing_key=$work/custody_ed25519"
play_rc=$?
if [ "$play_rc" = 0 ]; then
  # collect_url: the service is a witness of the log's chain heads (and InfluxDB, when the callback is on).
  say "ansible-playbook vmforensics.memdump.verify -e label=$label -e allowed_signers=$evidence/allowed_signers -e collect_url=$url"
  ansible-playbook -i localhost, vmforensics.memdump.verify -e "label=$label" -e "evidence_dir=$evidence" -e "collect_url=$url" \
    -e "allowed_signers=$evidence/allowed_signers" || play_rc=$?
fi

# --- Results ------------------------------------------------------------------------------------
say "per VM (from the service), and the collected evidence (from the custody manifest)"
curl -s -H "Authorization: Bearer $token" "$url/api/dumps?label=$label" > "$work/dumps.json"
python - "$work/dumps.json" "$evidence/$label/manifest.json" <<'PY'
import json, os, sys
dumps = json.load(open(sys.argv[1])).get('dumps', [])
manifest = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {'entries': []}
collected = {e['dump_id']: e for e in manifest['entries']}
for d in sorted(dumps, key=lambda d: d['vm']):
    print('%-20s %-9s %s' % (d['vm'], d['state'], d.get('message') or ''))
    if d['state'] == 'completed':
        print('    dump path  %s' % d.get('dump_path'))
        print('    size       %s bytes' % d.get('size_bytes'))
        print('    sha256     %s' % d.get('sha256'))
        print('    method     %s (%s)' % (d.get('method'), d.get('method_reason') or 'as asked'))
        print('    duration   %.3f s (guest paused %s s)' % (d.get('duration_sec') or 0, d.get('paused_sec')))
        e = collected.get(d['dump_id'])
        if e:
            print('    evidence   %s (SHA-256 verified on download)' % e.get('evidence_file'))
            if e.get('derived_file'):
                print('    derived    %s (ELF core of the live stream, checked page by page)' % e['derived_file'])
print('custody manifest: %d entries, operator %s' % (len(manifest['entries']),
      ', '.join(sorted({e.get('operator', '?') for e in manifest['entries']})) or '-'))
PY

if [ -n "${ANSIBLE_CALLBACKS_ENABLED:-}" ]; then
  say "records read back from InfluxDB ($MEMDUMP_TEST_INFLUXDB_URL, database $influx_db)"
  curl -sG "$MEMDUMP_TEST_INFLUXDB_URL/query" --data-urlencode "db=$influx_db" \
    --data-urlencode "q=SELECT * FROM memdump WHERE label='$label'" > "$work/influx.json"
  python - "$work/influx.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))['results'][0]
series = res.get('series') or []
if not series:
    print('no records (%s)' % res.get('error', 'the callback wrote nothing'))
for s in series:
    cols = s['columns']
    for row in s['values']:
        r = dict(zip(cols, row))
        print('%s  host=%s vm=%s state=%s format=%s size=%s duration=%s sha256=%s' % (
            r.get('time'), r.get('host'), r.get('vm'), r.get('state'), r.get('format'),
            r.get('size_bytes'), r.get('duration_sec'), r.get('sha256')))
PY
else
  say "InfluxDB records: skipped (no callback or no InfluxDB in the stack)"
fi

say "evidence kept in $evidence/$label (images, custody.jsonl, manifest.json; the public key in $evidence/allowed_signers); remove it with: rm -rf $evidence"
if [ "$play_rc" != 0 ]; then die "the acquisition playbook failed (rc $play_rc)"; fi
say "demo finished"
