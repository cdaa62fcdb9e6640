"""The systemd unit of role vmforensics.memdump.memdump_service renders and passes ``systemd-analyze verify``.

test_systemd_host.py runs the unit on a real systemd host; here every variant is checked statically:
its hardening keeps the dump and state directories writable and the libvirt socket reachable.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.environ.get('MEMDUMP_REPO') or os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def render(tmp_path, **overrides):
    launcher = tmp_path / 'bin' / 'memdump-service'
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text('#!/bin/sh\n')
    launcher.chmod(0o755)
    dest = tmp_path / 'memdump.service'
    extra = {'_memdump_service_launcher': str(launcher), 'role_path': os.path.join(REPO, 'roles', 'memdump_service')}
    extra.update(overrides)
    cmd = ['ansible', 'localhost', '-c', 'local', '-m', 'ansible.builtin.template',
           '-a', 'src=%s dest=%s' % (os.path.join(REPO, 'roles/memdump_service/templates/memdump.service.j2'), dest),
           '-e', '@' + os.path.join(REPO, 'roles/memdump_service/defaults/main.yml'), '-e', json.dumps(extra)]
    env = dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING='False')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


@pytest.mark.parametrize('overrides', [
    {'memdump_service_user': 'root', 'memdump_service_group': 'root'},
    {'memdump_service_port': 443, 'memdump_service_ip_allow': ['192.0.2.10', '2001:db8::/64']}],
    ids=['root', 'default-user-low-port-ip-allow'])
def test_unit_is_hardened_and_valid(tmp_path, overrides):
    # Group libvirt as the role finds it on a libvirt host.
    unit = render(tmp_path, _memdump_service_libvirt_groups=['libvirt'], **overrides).read_text()
    lines = [line for line in unit.splitlines() if '=' in line and not line.startswith('#')]
    settings = dict(line.split('=', 1) for line in lines)
    filters = [line.split('=', 1)[1] for line in lines if line.startswith('SystemCallFilter=')]
    assert filters == ['@system-service', '~@privileged @resources']
    assert settings['MemoryDenyWriteExecute'] == 'true' and settings['LimitNOFILE'] == '65536'
    assert 'InaccessiblePaths=-/var/lib/libvirt/images' in lines
    caps = settings['CapabilityBoundingSet'].split()
    assert not {'CAP_CHOWN', 'CAP_FOWNER', 'CAP_DAC_READ_SEARCH'} & set(caps)
    unprivileged = 'memdump_service_user' not in overrides
    assert settings['User'] == ('memdump' if unprivileged else 'root')
    if unprivileged:
        assert caps == ['CAP_NET_BIND_SERVICE']
        assert settings['IPAddressDeny'] == 'any'
        assert settings['IPAddressAllow'] == 'localhost 192.0.2.10 2001:db8::/64'
    else:
        assert caps == ['CAP_DAC_OVERRIDE'] and 'IPAddressDeny' not in settings
    assert settings['ProtectSystem'] == 'strict' and settings['NoNewPrivileges'] == 'true'
    writable = settings['ReadWritePaths'].split()
    assert '/var/lib/memdump/dumps' in writable and '/var/lib/memdump' in writable and '-/run/libvirt' in writable
    assert 'AF_UNIX' in settings['RestrictAddressFamilies']
    if unprivileged:
        assert settings['SupplementaryGroups'] == 'libvirt'
        assert settings['AmbientCapabilities'] == 'CAP_NET_BIND_SERVICE'
    if shutil.which('systemd-analyze'):
        proc = subprocess.run(['systemd-analyze', 'verify', str(tmp_path / 'memdump.service')],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
