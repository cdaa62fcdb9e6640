#!/usr/bin/env bash
# Inside a root of tests/stack/debian_root.sh, in this repository: installs the service as the memdump_service role
# does (the distribution's python3 and python3-libvirt, a venv with system site packages,
# `pip install --require-hashes --only-binary :all: -r service/requirements.lock`, then the service without build
# isolation) and runs the service's own tests (service/tests) with that Python, JUnit to RESULTS_XML.
# The tests that need a real libvirtd/QEMU skip here (no MEMDUMP_TEST_* in the environment): the `service`
# layer runs them on this machine's Python.
set -euo pipefail
xml=$1; shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=/opt/memdump-service
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
echo "Debian $(cat /etc/debian_version), $(python3 --version), libvirt $(python3 -c 'import libvirt; print(libvirt.getVersion())')"
python3 -m venv --system-site-packages "$venv"
# The role's own command first, so it is what is proven to work on this Python.
"$venv/bin/pip" install -q --require-hashes --only-binary :all: -r "$repo/service/requirements.lock"
"$venv/bin/pip" install -q --require-hashes --only-binary :all: -r "$repo/tests/requirements-service.lock"
# setuptools writes build/ and *.egg-info next to the sources: build from a copy.
mkdir -p /tmp/src && cp -a "$repo/service" /tmp/src/service && rm -rf /tmp/src/service/build /tmp/src/service/*.egg-info
"$venv/bin/pip" install -q --no-deps --no-build-isolation /tmp/src/service
"$venv/bin/python" -c 'import sys, libvirt, memdump_service, fastapi, uvicorn, pydantic; print("service imports on", sys.version.split()[0])'
cd "$repo/service"
"$venv/bin/python" -m pytest -p no:cacheprovider -ra --junitxml="$xml" tests "$@"
