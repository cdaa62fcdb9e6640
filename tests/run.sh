#!/usr/bin/env bash
# Runs the test layers. `make test` = `tests/run.sh all`: install, bring up the stack, run every
# layer, tear down (also on failure), print "N passed, N failed".
#
#   tests/run.sh all                 everything, as CI does
#   tests/run.sh LAYER [args]        one layer against an already running stack (tests/stack/stack.sh up)
#
# Layers: service, pythons, units, integration, sanity, core-oldest, core-newest, lint, galaxy, molecule, build.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEMDUMP_VENV:-$repo/.venv}
stack=$repo/tests/stack/stack.sh
results=${MEMDUMP_RESULTS_DIR:-$repo/tests/output/results}
export PATH="$venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
# Debian 13 mounts /tmp as a tmpfs of half the RAM: the tests' dumps of GiB guests, their evidence copies and
# pytest's temporary directories (tempfile, mktemp) go to disk instead, or a run ends in "No space left on device".
# Under the repository, which the Debian roots of the core layers see at the same path, as libvirtd does outside.
if [ -z "${TMPDIR:-}" ] && [ "$(stat -f -c %T /tmp 2>/dev/null)" = tmpfs ]; then
  export TMPDIR=$repo/tests/output/tmp
  mkdir -p "$TMPDIR"
fi

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

# X.Y of the venv's Python (ansible-test runs its tests with it).
python_version() { python -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# A venv of a layer's own, from a lock, with the service installed (editable) and the system's python3-libvirt;
# rebuilt only when the lock changes. In tests/output/venvs/NAME (git-ignored, out of the tarball).
layer_venv() {  # name lock
  local dir=$repo/tests/output/venvs/$1 want
  want=$(cat "$2" "$repo/service/pyproject.toml" /etc/debian_version | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.memdump-stamp" 2>/dev/null)" != "$want" ]; then
    echo "creating the virtual environment $dir from ${2#"$repo"/} (pip's output: $dir/install.log)" >&2
    rm -rf "$dir"
    /usr/bin/python3 -m venv --system-site-packages "$dir" || return 1
    {
      "$dir/bin/pip" install --require-hashes --only-binary :all: -r "$2" &&
      if grep -q "^fastapi==" "$2"; then "$dir/bin/pip" install --no-deps --no-build-isolation -e "$repo/service"; fi
    } > "$dir/install.log" 2>&1 || { tail -20 "$dir/install.log" >&2; echo "venv install failed (see $dir/install.log)" >&2; return 1; }
    echo "$want" > "$dir/.memdump-stamp"
  fi
  echo "$dir"
}

# The integration tests that run on the oldest and the newest ansible-core too (about 2.5 of the 4 minutes their
# files take): the host-side modules through real ansible-playbook against the real service on QEMU guests, with a
# token and with TLS (ca_path, validate_certs); the acquire role and playbook with the InfluxDB callback and the
# report playbook; the controller-side action plugins: collect refusing a hostile service's names, the signed
# custody log, verify finding a tampered image, delete. Everything else runs on the 2.19 layers only.
core_integration=(
  test_modules.py::test_targets_on_qemu test_modules.py::test_token test_modules.py::test_tls_ca_path_and_validate_certs
  test_acquire_playbook.py::test_acquire_twice_same_label_changes_and_downloads_nothing
  test_custody.py::test_hostile_names_and_bodies_are_refused test_custody.py::test_acquire_verify_tamper_recipe
)

# ansible-test sanity (empty ignore files) and the integration subset with one ansible-core, in a venv of its own.
core_layer() {  # name
  local name=$1 venv rc=0; shift
  venv=$(layer_venv "ansible-$name" "$repo/tests/requirements-ansible-$name.lock") || return 1
  MEMDUMP_VENV=$venv bash "$stack" ansible-test-pip || return 1
  log "ansible-core $("$venv/bin/python" -c 'import ansible; print(ansible.__version__)') on Python $("$venv/bin/python" --version | cut -d' ' -f2): sanity"
  MEMDUMP_VENV=$venv bash "$repo/tests/run.sh" sanity || rc=1
  log "ansible-core $name: integration tests ${core_integration[*]}"
  MEMDUMP_VENV=$venv MEMDUMP_RESULTS_DIR=$results/core-$name bash "$repo/tests/run.sh" integration \
    "${core_integration[@]/#/$repo/tests/integration/}" "$@" || rc=1
  cp "$results/core-$name/integration.xml" "$results/core-$name.xml" 2>/dev/null || rc=1
  return $rc
}

# A core layer in a throw-away root of another Debian release, on this machine's /tmp and libvirtd, so that the
# stack (guests, InfluxDB, the env file) is the one the other layers use.
core_layer_in_root() {  # suite name [args]
  local suite=$1 name=$2; shift 2
  load_stack_env
  mkdir -p "$results"
  DEBIAN_ROOT_HOST_TMP=1 bash "$repo/tests/stack/debian_root.sh" run "$suite" \
    env MEMDUMP_STACK_DIR="${MEMDUMP_STACK_DIR:-/tmp/memdump-stack}" MEMDUMP_RESULTS_DIR="$results" \
    bash "$repo/tests/run.sh" core-in-root "$name" "$@"
}

# ansible-core 2.16's controller runs on Python 3.10 to 3.12: where this machine's Python is newer (Debian 13),
# in a Debian 12 root (Python 3.11).
layer_core-oldest() {
  if /usr/bin/python3 -c 'import sys; sys.exit(0 if sys.version_info[:2] > (3, 12) else 1)'; then
    core_layer_in_root bookworm oldest "$@"
  else
    core_layer oldest "$@"
  fi
}

# ansible-core 2.20 and later need Python 3.12 or later: a Debian 13 root (Python 3.13).
layer_core-newest() { core_layer_in_root trixie newest "$@"; }

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
    bash "$repo/tests/stack/debian_root.sh" run "$suite" \
      bash "$repo/tests/stack/service_tests_in_root.sh" "$results/pythons-$suite.xml" "$@" || rc=1
    if [ -f "$results/pythons-$suite.xml" ]; then xml+=("$results/pythons-$suite.xml"); else rc=1; fi
  done
  merge_junit "$results/pythons.xml" "${xml[@]}"
  return $rc
}

layer_units() {
  local dest rc; dest=$(collection_copy) || return 1
  (cd "$dest" && ansible-test units --venv --python "$(python_version)" --requirements "$@")
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
  (cd "$dest" && ansible-test sanity --local --python "$(python_version)" --requirements "$@") 2>&1 | tee "$dest/../sanity.log"
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
  # Only what users run and read: litter and what only developers use (the test suite and its stack, CI, the
  # service's tests, molecule, benchmarks, changelog fragments, local builds of the service) stay out.
  bad=$(grep -E '^(Makefile|\.ci|\.ansible-lint|\.gitignore|tests|service/tests|extensions|bench|changelogs/fragments|service/build)(/|$)|(^|/)(\.ansible|\.venv|__pycache__|\.stack|\.pytest_cache|[^/]*\.egg-info)(/|$)' <<< "$list" | head -5)
  if [ -n "$bad" ]; then echo "the tarball holds what only developers use: $bad"; return 1; fi
  for f in MANIFEST.json FILES.json README.md plugins/modules/memdump_trigger.py plugins/action/memdump_collect.py \
    roles/memdump_service/tasks/main.yml roles/memdump_service/README.md roles/memdump_acquire/README.md \
    playbooks/acquire.yml meta/runtime.yml service/pyproject.toml service/requirements.lock service/memdump_service/app.py \
    changelogs/changelog.yaml docs/runbook.md; do
    grep -qx "$f" <<< "$list" || { echo "the tarball lacks $f"; return 1; }
  done
  echo "collection tarball is clean ($(wc -l <<< "$list") entries)"
}

# What Galaxy and Automation Hub run on an upload: galaxy-importer (with its ansible-lint step) on the built tarball;
# and antsibull-docs' lint of the documentation (plugins, roles, changelog), in a venv of their own.
layer_galaxy() {
  local venv out dest rc=0
  venv=$(layer_venv galaxy "$repo/tests/requirements-galaxy.lock") || return 1
  dest=$(collection_copy) || return 1
  out=$dest/../galaxy
  mkdir -p "$out"
  # Galaxy refuses a collection without `repository`, and galaxy.yml names none until the project has its public
  # address (no placeholder is published): the copy under test gets this clone's https origin, or a stand-in, and
  # the layer says that an upload needs the real one.
  if ! grep -q '^repository:' "$dest/galaxy.yml"; then
    local origin; origin=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
    case $origin in https://*) ;; *) origin=https://repository.invalid/vmforensics/memdump ;; esac
    echo "layer galaxy: galaxy.yml has no 'repository'; Galaxy refuses an upload without it (set it to the project's" \
      "public repository). The import below uses $origin." >&2
    echo "repository: $origin" >> "$dest/galaxy.yml"
  fi
  (cd "$dest" && "$venv/bin/ansible-galaxy" collection build --force --output-path "$out" >/dev/null) || return 1
  printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n' > "$out/importer.cfg"
  log "galaxy-importer $("$venv/bin/pip" show galaxy-importer 2>/dev/null | sed -n 's/^Version: //p') on $(basename "$out"/vmforensics-memdump-*.tar.gz)"
  (cd "$out" && GALAXY_IMPORTER_CONFIG=$out/importer.cfg "$venv/bin/python" -m galaxy_importer.main \
    "$out"/vmforensics-memdump-*.tar.gz) > "$out/importer.log" 2>&1 || rc=1
  cat "$out/importer.log"
  # The importer reports lint findings and refusals as lines of its log, and can exit 0 with them.
  if grep -E "^(ERROR|WARNING)|The import failed" "$out/importer.log" | grep -v "Location 'file" >/dev/null; then
    echo "layer galaxy: galaxy-importer reported errors or warnings (above)" >&2; rc=1
  fi
  log "antsibull-docs lint-collection-docs"
  (cd "$dest" && PATH="$venv/bin:$PATH" antsibull-docs lint-collection-docs --plugin-docs --skip-rstcheck .) || rc=1
  return $rc
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
  for layer in service pythons units integration sanity core-oldest core-newest lint galaxy molecule build; do
    log "layer: $layer"
    if "layer_$layer"; then ok=1; else ok=0; fi
    case $layer in
      service|pythons|units|integration|core-oldest|core-newest)
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
  service|pythons|units|integration|sanity|core-oldest|core-newest|lint|galaxy|molecule|build) l=$1; shift; "layer_$l" "$@" ;;
  core-in-root) shift; core_layer "$@" ;;  # what core-newest runs inside its Debian 13 root
  *) echo "usage: $0 [all|service|pythons|units|integration|sanity|core-oldest|core-newest|lint|galaxy|molecule|build] [args]" >&2; exit 2 ;;
esac
