#!/usr/bin/env bash
# Runs the test layers. `make test` = `tests/run.sh all`: install, bring up the stack, run every
# layer, tear down (also on failure), print "N passed, N failed".
#
#   tests/run.sh all                 everything, as CI does
#   tests/run.sh LAYER [args]        one layer against an already running stack (tests/stack/stack.sh up)
#
# Layers: service, units, integration, sanity, lint, molecule, build.
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

# A copy of the collection at .../ansible_collections/vmforensics/memdump, as ansible-test requires.
collection_copy() {
  # A fresh directory per run, so that two runs (two developers, or a layer and a by-hand run) never share one.
  local root dest
  mkdir -p "$repo/tests/output"
  root=$(mktemp -d "$repo/tests/output/collection.XXXXXX")
  dest=$root/ansible_collections/vmforensics/memdump
  mkdir -p "$dest"
  (cd "$repo" && git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$dest/")
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

run_pytest() {  # name paths...
  local name=$1; shift
  mkdir -p "$results"
  python -m pytest -p no:cacheprovider -ra --junitxml="$results/$name.xml" "$@"
}

layer_service() {
  load_stack_env
  run_pytest service "$repo/service/tests" "$@"
}

layer_units() {
  local dest; dest=$(collection_copy)
  (cd "$dest" && ansible-test units --venv --python 3.11 --requirements "$@")
  local rc=$?
  mkdir -p "$results"
  cp "$dest"/tests/output/junit/*.xml "$results/" 2>/dev/null || true
  return $rc
}

layer_integration() {
  load_stack_env
  export ANSIBLE_COLLECTIONS_PATH; ANSIBLE_COLLECTIONS_PATH=$(collections_path)
  run_pytest integration "$repo/tests/integration" "$@"
}

layer_sanity() {
  local dest; dest=$(collection_copy)
  if compgen -G "$repo/tests/sanity/ignore-*.txt" >/dev/null; then
    echo "tests/sanity/ignore-*.txt must not exist: fix the code instead"; return 1
  fi
  (cd "$dest" && ansible-test sanity --local --python 3.11 --requirements "$@")
}

layer_lint() {
  (cd "$repo" && ANSIBLE_COLLECTIONS_PATH=$(collections_path) ansible-lint "$@")
}

layer_molecule() {
  load_stack_env
  local rc=0 s
  [ -d "$repo/extensions/molecule" ] || return 0
  # The scenarios use this checkout as vmforensics.memdump (no build, no Galaxy).
  export ANSIBLE_COLLECTIONS_PATH; ANSIBLE_COLLECTIONS_PATH=$(collections_path)
  for s in "$repo"/extensions/molecule/*/; do
    [ -f "$s/molecule.yml" ] || continue
    s=$(basename "$s")
    (cd "$repo/extensions" && molecule test -s "$s") || rc=1
  done
  return $rc
}

layer_build() {
  local out; out=$(mktemp -d)
  (cd "$repo" && ansible-galaxy collection build --force --output-path "$out" >/dev/null) || return 1
  local bad
  bad=$(tar -tzf "$out"/vmforensics-memdump-*.tar.gz | grep -E '(^|/)(tests/output|\.ansible|\.venv|__pycache__|\.stack)(/|$)' | head -5)
  rm -rf "$out"
  if [ -n "$bad" ]; then echo "build litter in the tarball: $bad"; return 1; fi
  echo "collection tarball is clean"
}

# Counts test cases from the JUnit files that the pytest-based layers wrote.
junit_counts() {
  python - "$results" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in glob.glob(sys.argv[1] + '/*.xml'):
    for suite in ET.parse(path).getroot().iter('testsuite'):
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
  bash "$stack" up || { echo "0 passed, 1 failed"; exit 1; }
  rm -rf "$results" "$repo"/tests/output/collection.*
  local layer failed_layers=() other_passed=0
  for layer in service units integration sanity lint molecule build; do
    log "layer: $layer"
    if "layer_$layer"; then
      case $layer in sanity|lint|molecule|build) other_passed=$((other_passed + 1)) ;; esac
    else
      failed_layers+=("$layer")
    fi
  done
  # Tear down before the summary, so that "N passed, N failed" is the closing line.
  bash "$stack" down
  trap - EXIT
  read -r p f s < <(junit_counts)
  # Layers that are not pytest count as one test each; a pytest layer that failed without writing a
  # failure to its JUnit file (collection error) counts as one failure.
  local extra_failed=0 l
  for l in "${failed_layers[@]}"; do
    case $l in sanity|lint|molecule|build) extra_failed=$((extra_failed + 1)) ;;
      *) [ "$f" -gt 0 ] || extra_failed=$((extra_failed + 1)) ;; esac
  done
  log "summary ($((SECONDS - started)) s); failed layers: ${failed_layers[*]:-none}; skipped tests: $s"
  echo "$((p + other_passed)) passed, $((f + extra_failed)) failed"
  [ ${#failed_layers[@]} -eq 0 ]
}

case "${1:-all}" in
  all) cmd_all ;;
  service|units|integration|sanity|lint|molecule|build) l=$1; shift; "layer_$l" "$@" ;;
  *) echo "usage: $0 [all|service|units|integration|sanity|lint|molecule|build] [args]" >&2; exit 2 ;;
esac
