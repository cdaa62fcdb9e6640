#!/usr/bin/env bash
# Runs the test layers. `make test` = `tests/run.sh all`: install, bring up the stack, run every
# layer, tear down (also on failure), print "N passed, N failed".
#
#   tests/run.sh all                 everything, as CI does
#   tests/run.sh LAYER [args]        one layer against an already running stack (tests/stack/stack.sh up)
#
# Layers: service, pythons, units, integration, sanity, lint, molecule, build.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEMDUMP_VENV:-$repo/.venv}
stack=$repo/tests/stack/stack.sh
results=${MEMDUMP_RESULTS_DIR:-$repo/tests/output/results}
export PATH="$venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

log() { printf '\n=== %s\n' "$*"; }

load_stack_env() {
  local env=${MEMDUMP_STACK_DIR:-/tmp/memdump-stack}/env
  # shellcheck disable=SC1090
  [ -f "$env" ] && . "$env"
  export MEMDUMP_REPO="$repo"
}

# A copy of the collection at .../ansible_collections/vmforensics/memdump, as ansible-test requires:
# the files git knows (tracked and untracked, not ignored), so build litter never gets in.
collection_copy() {
  # A fresh directory per run, so that two runs (two developers, or a layer and a by-hand run) never share one.
  local root dest count
  mkdir -p "$repo/tests/output"
  root=$(mktemp -d "$repo/tests/output/collection.XXXXXX")
  dest=$root/ansible_collections/vmforensics/memdump
  mkdir -p "$dest"
  # --ignore-failed-read: a file deleted in the work tree but not yet in git is simply not copied.
  (cd "$repo" && git ls-files -co --exclude-standard -z | tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null) | tar -x -C "$dest" || return 1
  count=$(find "$dest" -type f | wc -l)
  # A copy without the collection's own files would test nothing and still pass.
  if [ ! -f "$dest/galaxy.yml" ] || [ ! -d "$dest/plugins/modules" ] || [ "$count" -lt 50 ]; then
    echo "the copy of the collection at $dest is incomplete ($count files): nothing to test" >&2
    return 1
  fi
  (cd "$dest" && git init -q && git add -A >/dev/null 2>&1)
  echo "$dest"
}

# A collections path in which vmforensics.memdump is this checkout (for ansible-playbook, ansible-doc).
collections_path() {
  local root=$repo/tests/output/collections
  mkdir -p "$root/ansible_collections/vmforensics"
  ln -sfn "$repo" "$root/ansible_collections/vmforensics/memdump"
  echo "$root"
}

# One JUnit file, named for the layer, from several, so the summary can count the layer on its own.
merge_junit() {  # out files...
  python - "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
merged = ET.Element('testsuites')
for path in sys.argv[2:]:
    root = ET.parse(path).getroot()
    merged.extend([root] if root.tag == 'testsuite' else list(root))
ET.ElementTree(merged).write(sys.argv[1])
PY
}

run_pytest() {  # name paths...
  local name=$1 rc; shift
  mkdir -p "$results"
  python -m pytest -p no:cacheprovider -ra --junitxml="$results/$name.xml" "$@"
  rc=$?
  # pytest's 5: nothing was collected, so nothing was tested.
  [ $rc -ne 5 ] || echo "layer $name: pytest collected no tests" >&2
  return $rc
}

layer_service() {
  load_stack_env
  run_pytest service "$repo/service/tests" "$@"
}

# The service's own tests on the oldest and the newest Python it supports, each the distribution's Python with the
# distribution's python3-libvirt, installed as the memdump_service role installs it: Debian 11 (Python 3.9 as on
# RHEL 9, libvirt 7.0) and Debian 13 (Python 3.13, libvirt 11). The tests that need QEMU run in the `service` layer.
layer_pythons() {
  local suite rc=0 xml=()
  mkdir -p "$results"
  for suite in ${MEMDUMP_PYTHONS_SUITES:-bullseye trixie}; do
    log "service tests on Debian $suite"
    DEBIAN_ROOT_OUT=$results bash "$repo/tests/stack/debian_root.sh" run "$suite" \
      bash /repo/tests/stack/service_tests_in_root.sh "pythons-$suite" "$@" || rc=1
    if [ -f "$results/pythons-$suite.xml" ]; then xml+=("$results/pythons-$suite.xml"); else rc=1; fi
  done
  merge_junit "$results/pythons.xml" "${xml[@]}"
  return $rc
}

layer_units() {
  local dest rc; dest=$(collection_copy) || return 1
  (cd "$dest" && ansible-test units --venv --python 3.11 --requirements "$@")
  rc=$?
  mkdir -p "$results"
  if ! compgen -G "$dest/tests/output/junit/*.xml" >/dev/null; then
    echo "layer units: ansible-test wrote no test results" >&2
    return 1
  fi
  merge_junit "$results/units.xml" "$dest"/tests/output/junit/*.xml
  return $rc
}

layer_integration() {
  load_stack_env
  export ANSIBLE_COLLECTIONS_PATH; ANSIBLE_COLLECTIONS_PATH=$(collections_path)
  run_pytest integration "$repo/tests/integration" "$@"
}

layer_sanity() {
  local dest rc; dest=$(collection_copy) || return 1
  if compgen -G "$repo/tests/sanity/ignore-*.txt" >/dev/null; then
    echo "tests/sanity/ignore-*.txt must not exist: fix the code instead"; return 1
  fi
  (cd "$dest" && ansible-test sanity --local --python 3.11 --requirements "$@") 2>&1 | tee "$dest/../sanity.log"
  rc=${PIPESTATUS[0]}
  # ansible-test passes a sanity run that found nothing to check; that run tested nothing.
  if grep -q "All targets skipped" "$dest/../sanity.log"; then
    echo "layer sanity: ansible-test skipped all targets (an empty or wrong copy of the collection?): failed" >&2
    return 1
  fi
  return "$rc"
}

layer_lint() {
  (cd "$repo" && ANSIBLE_COLLECTIONS_PATH=$(collections_path) ansible-lint "$@")
}

layer_molecule() {
  load_stack_env
  local rc=0 s ran=0
  # The scenarios use this checkout as vmforensics.memdump (no build, no Galaxy).
  export ANSIBLE_COLLECTIONS_PATH; ANSIBLE_COLLECTIONS_PATH=$(collections_path)
  for s in "$repo"/extensions/molecule/*/; do
    [ -f "$s/molecule.yml" ] || continue
    s=$(basename "$s")
    (cd "$repo/extensions" && molecule test -s "$s") || rc=1
    ran=$((ran + 1))
  done
  [ $ran -gt 0 ] || { echo "layer molecule: no scenario under extensions/molecule/" >&2; return 1; }
  return $rc
}

layer_build() {
  local out list bad
  out=$(mktemp -d)
  (cd "$repo" && ansible-galaxy collection build --force --output-path "$out" >/dev/null) || { rm -rf "$out"; return 1; }
  list=$(tar -tzf "$out"/vmforensics-memdump-*.tar.gz)
  rm -rf "$out"
  # Litter and what only developers use (benchmarks, local builds of the service) stay out.
  bad=$(grep -E '(^|/)(tests/output|\.ansible|\.venv|__pycache__|\.stack|bench|service/build|[^/]*\.egg-info)(/|$)' <<< "$list" | head -5)
  if [ -n "$bad" ]; then echo "build litter in the tarball: $bad"; return 1; fi
  for f in MANIFEST.json FILES.json plugins/modules/memdump_trigger.py roles/memdump_service/tasks/main.yml service/requirements.lock; do
    grep -qx "$f" <<< "$list" || { echo "the tarball lacks $f"; return 1; }
  done
  echo "collection tarball is clean ($(wc -l <<< "$list") entries)"
}

# "passed failed skipped" of one pytest layer's JUnit file (0 0 0 when it wrote none).
junit_counts() {  # file
  python - "$1" <<'PY'
import os, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
if os.path.exists(sys.argv[1]):
    for suite in ET.parse(sys.argv[1]).getroot().iter('testsuite'):
        t = int(suite.get('tests', 0)); f = int(suite.get('failures', 0)) + int(suite.get('errors', 0))
        s = int(suite.get('skipped', 0))
        passed += t - f - s; failed += f; skipped += s
print(passed, failed, skipped)
PY
}

cmd_all() {
  local started=$SECONDS
  bash "$stack" install || { echo "0 passed, 1 failed"; exit 1; }
  bash "$stack" down >/dev/null 2>&1 || true
  trap 'bash "$stack" down' EXIT
  trap 'exit 130' INT TERM
  MEMDUMP_STACK_SYSTEMD_HOST=1 bash "$stack" up || { echo "0 passed, 1 failed"; exit 1; }
  rm -rf "$results" "$repo"/tests/output/collection.*
  local layer ok failed_layers=() passed=0 failed=0 skipped=0 p f s lines=()
  for layer in service pythons units integration sanity lint molecule build; do
    log "layer: $layer"
    if "layer_$layer"; then ok=1; else ok=0; fi
    case $layer in
      service|pythons|units|integration)
        # Every test case counts; a layer that failed without a failing case (a collection error,
        # nothing collected) counts as one failure, and one that passed without a case as one too.
        read -r p f s < <(junit_counts "$results/$layer.xml")
        if [ $ok = 0 ] && [ "$f" = 0 ]; then f=1; fi
        if [ $ok = 1 ] && [ "$p" = 0 ]; then f=1; ok=0; echo "layer $layer: passed without running a test" >&2; fi ;;
      *) if [ $ok = 1 ]; then p=1 f=0; else p=0 f=1; fi; s=0 ;;
    esac
    [ $ok = 1 ] || failed_layers+=("$layer")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    lines+=("$(printf '  %-12s %s: %d passed, %d failed, %d skipped' "$layer" "$([ $ok = 1 ] && echo ok || echo FAILED)" "$p" "$f" "$s")")
  done
  # Tear down before the summary, so that "N passed, N failed" is the closing line.
  bash "$stack" down
  trap - EXIT
  log "summary ($((SECONDS - started)) s); failed layers: ${failed_layers[*]:-none}"
  printf '%s\n' "${lines[@]}"
  echo "$passed passed, $failed failed"
  [ ${#failed_layers[@]} -eq 0 ]
}

case "${1:-all}" in
  all) cmd_all ;;
  service|pythons|units|integration|sanity|lint|molecule|build) l=$1; shift; "layer_$l" "$@" ;;
  *) echo "usage: $0 [all|service|pythons|units|integration|sanity|lint|molecule|build] [args]" >&2; exit 2 ;;
esac
