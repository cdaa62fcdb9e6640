"""Fetch, once per controller, the wheels of the service's lock for one host's Python and platform.

Run by role vmforensics.memdump.memdump_service on the controller (hypervisors often reach no package index):

    python memdump_wheels.py --lock requirements.lock --cache DIR --python-version 3.9 --machine x86_64 --glibc 2.31
        [--pip-args '--index-url ...']

Prints one JSON object: ``dir`` (holding ``wheels/``), ``changed`` (downloaded now), ``wheels`` (file names) or
``failed`` with ``msg``. Every wheel, fetched now or found in the cache, is checked against the lock's SHA-256
hashes before it is used: a cache that someone changed is refused, not copied to the hosts.
"""
import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from packaging.markers import Marker

# manylinux_2_5 (manylinux1) is the oldest tag pip knows.
OLDEST_GLIBC_MINOR = 5
LEGACY_TAGS = {17: 'manylinux2014', 12: 'manylinux2010', 5: 'manylinux1'}


def normalize(name):
    """PEP 503 name normalisation (wheel file names use underscores, the lock dashes)."""
    return re.sub(r'[-_.]+', '-', name).lower()


def read_lock(path):
    """[(name, version, marker or None, {sha256, ...})] from a hashed lock (pip-compile or uv pip compile)."""
    with open(path, encoding='utf-8') as handle:
        text = handle.read().replace('\\\n', ' ')
    entries = []
    for line in text.splitlines():
        line = line.split(' #', 1)[0].strip()
        match = re.match(r'^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.*?))?\s*(?=--hash|$)', line)
        if not match or line.startswith('#'):
            continue
        hashes = set(re.findall(r'--hash=sha256:([0-9a-f]{64})', line))
        if not hashes:
            raise ValueError('%s: %s==%s has no --hash=sha256: a lock without hashes cannot be checked'
                             % (path, match.group(1), match.group(2)))
        entries.append((normalize(match.group(1)), match.group(2), match.group(3) or None, hashes))
    if not entries:
        raise ValueError('%s holds no pinned requirement' % path)
    return entries


def for_target(entries, version, machine):
    """The lock's entries a CPython of this version on Linux/machine installs.

    pip download evaluates the environment markers with the controller's Python, not the target's (--python-version
    does not change them), so the lock is narrowed here and given to pip without markers.
    """
    environment = {'python_version': version, 'python_full_version': version + '.0', 'implementation_name': 'cpython',
                   'platform_python_implementation': 'CPython', 'sys_platform': 'linux', 'platform_system': 'Linux',
                   'os_name': 'posix', 'platform_machine': machine}
    return [entry for entry in entries if entry[2] is None or Marker(entry[2]).evaluate(environment)]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check(wheel_dir, entries):
    """Names of the wheels in wheel_dir; raises ValueError for a file the lock does not name with that hash, or a
    locked requirement without its wheel."""
    lock = dict(((name, version), hashes) for name, version, _marker, hashes in entries)
    names = sorted(os.listdir(wheel_dir))
    missing = set(lock) - set((normalize(name.split('-')[0]), name.split('-')[1]) for name in names if name.count('-') >= 4)
    if missing:
        raise ValueError('%s lacks the wheels of %s: remove %s and run again'
                         % (wheel_dir, ', '.join('%s==%s' % item for item in sorted(missing)), os.path.dirname(wheel_dir)))
    for name in names:
        parts = name.split('-')
        if not name.endswith('.whl') or len(parts) < 5:
            raise ValueError('%s: %s is not a wheel' % (wheel_dir, name))
        key = (normalize(parts[0]), parts[1])
        if key not in lock:
            raise ValueError('%s: %s is not in the lock (%s==%s)' % (wheel_dir, name, key[0], key[1]))
        if sha256(os.path.join(wheel_dir, name)) not in lock[key]:
            raise ValueError('%s: the SHA-256 of %s is not one the lock gives for %s==%s: remove %s and run again'
                             % (wheel_dir, name, key[0], key[1], os.path.dirname(wheel_dir)))
    if not names:
        raise ValueError('%s holds no wheel' % wheel_dir)
    return names


def platforms(machine, glibc):
    """pip --platform tags a host with this glibc accepts, newest first."""
    match = re.match(r'^2\.(\d+)', glibc or '')
    if not match:
        raise ValueError('the host reports no glibc version (%r): only glibc-based Linux hosts are supported' % glibc)
    tags = []
    for minor in range(int(match.group(1)), OLDEST_GLIBC_MINOR - 1, -1):
        tags.append('manylinux_2_%d_%s' % (minor, machine))
        if minor in LEGACY_TAGS:
            tags.append('%s_%s' % (LEGACY_TAGS[minor], machine))
    return tags + ['linux_%s' % machine]


def fetch(args):
    version = args.python_version
    if not re.match(r'^3\.\d+$', version):
        raise ValueError('unexpected Python version %r' % version)
    lock = for_target(read_lock(args.lock), version, args.machine)
    with open(args.lock, 'rb') as handle:
        lock_id = hashlib.sha256(handle.read()).hexdigest()[:16]
    target = os.path.join(args.cache, lock_id, 'cp%s-%s-glibc%s' % (version.replace('.', ''), args.machine, args.glibc))
    wheels = os.path.join(target, 'wheels')
    if os.path.isfile(os.path.join(target, 'complete')):
        return {'dir': target, 'changed': False, 'wheels': check(wheels, lock)}
    os.makedirs(args.cache, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix='download-', dir=args.cache)
    requirements = scratch + '.txt'
    with open(requirements, 'w', encoding='utf-8') as handle:
        for name, pinned, _marker, hashes in lock:
            handle.write('%s==%s %s\n' % (name, pinned, ' '.join('--hash=sha256:' + h for h in sorted(hashes))))
    try:
        command = [sys.executable, '-m', 'pip', 'download', '--quiet', '--disable-pip-version-check',
                   '--require-hashes', '--only-binary', ':all:', '--no-deps', '--dest', scratch,
                   '--implementation', 'cp', '--python-version', version, '--abi', 'cp%s' % version.replace('.', ''),
                   '--abi', 'abi3', '--abi', 'none', '-r', requirements]
        for tag in platforms(args.machine, args.glibc):
            command += ['--platform', tag]
        command += shlex.split(args.pip_args or '')
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
        if proc.returncode != 0:
            lines = [line for line in proc.stdout.splitlines() if 'is ignored' not in line]
            raise ValueError('pip download of the locked wheels for Python %s on %s (glibc %s) failed: %s'
                             % (version, args.machine, args.glibc, ' | '.join(lines[-6:])))
        names = check(scratch, lock)
        os.makedirs(target, exist_ok=True)
        if os.path.isdir(wheels):
            shutil.rmtree(wheels)
        os.rename(scratch, wheels)
        with open(os.path.join(target, 'complete'), 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(names) + '\n')
        return {'dir': target, 'changed': True, 'wheels': names}
    finally:
        os.unlink(requirements)
        if os.path.isdir(scratch):
            shutil.rmtree(scratch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lock', required=True)
    parser.add_argument('--cache', required=True)
    parser.add_argument('--python-version', required=True)
    parser.add_argument('--machine', required=True)
    parser.add_argument('--glibc', required=True)
    parser.add_argument('--pip-args', default='')
    args = parser.parse_args()
    try:
        result = fetch(args)
    except (OSError, ValueError) as exc:
        result = {'failed': True, 'msg': str(exc)}
    print(json.dumps(result))
    return 1 if result.get('failed') else 0


if __name__ == '__main__':
    sys.exit(main())
