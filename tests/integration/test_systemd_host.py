"""Role vmforensics.memdump.memdump_service on a real systemd host, as its own non-root user (the default).

The stack boots Debian 12 with systemd-nspawn (systemd as PID 1, dbus, polkitd, libvirtd, sshd on
loopback, one tiny TCG guest). Ansible reaches it over SSH as it reaches a hypervisor. The host first
runs the service as root with an image on disk; the default deployment then takes over as user
``memdump``: the earlier image and record stay usable, and memory-only ELF (FIFO), kdump (a file
libvirtd writes) and live dumps are taken, collected and hash-checked. The unit is measured with
``systemd-analyze security``.
"""
import json
import os
import re
import subprocess

import pytest

from conftest import free_port, http_json, sha256_file, stack_env

TOKEN = 'systemd-host-token-0123456789abcdef'


@pytest.fixture
def systemd_host(tmp_path):
    if os.environ.get('MEMDUMP_SYSTEMD_HOST_UNAVAILABLE'):
        pytest.skip(os.environ['MEMDUMP_SYSTEMD_HOST_UNAVAILABLE'])
    port, key = stack_env('MEMDUMP_SYSTEMD_HOST_SSH_PORT'), stack_env('MEMDUMP_SYSTEMD_HOST_SSH_KEY')
    inventory = tmp_path / 'hosts.ini'
    inventory.write_text(
        '[libvirt_hosts]\nhv-systemd ansible_host=127.0.0.1 ansible_port=%s ansible_user=root '
        'ansible_connection=ssh ansible_ssh_private_key_file=%s ansible_python_interpreter=/usr/bin/python3 '
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n" % (port, key))

    def ssh(command):
        proc = subprocess.run(['ssh', '-q', '-i', key, '-p', port, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
                               '-o', 'UserKnownHostsFile=/dev/null', 'root@127.0.0.1', command],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, '%s: %s%s' % (command, proc.stdout, proc.stderr)
        return proc.stdout.strip()

    yield str(inventory), ssh
    # Leave the host as the next run expects it: no unit, no images.
    ssh('systemctl disable --now memdump.service 2>/dev/null; rm -rf /etc/memdump /var/lib/memdump '
        '/etc/systemd/system/memdump.service; systemctl daemon-reload; userdel memdump 2>/dev/null; '
        'groupdel memdump 2>/dev/null; true')


def test_default_user_takes_over_from_root_and_dumps_every_way(systemd_host, run_playbook, tmp_path):
    inventory, ssh = systemd_host
    port, vm = free_port(), stack_env('MEMDUMP_SYSTEMD_HOST_VM')
    url = 'http://127.0.0.1:%d' % port
    deploy_vars = {'memdump_service_port': port, 'memdump_service_token': TOKEN}

    def deploy(**extra):
        result = run_playbook('vmforensics.memdump.deploy_service', extra_vars=dict(deploy_vars, **extra),
                              inventory=inventory)
        assert result.rc == 0, result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr
        return result

    def acquire(label, evidence, **extra):
        result = run_playbook('vmforensics.memdump.acquire', extra_vars=dict(
            {'memdump_hosts': 'localhost', 'label': label, 'vms': vm, 'collect': True, 'evidence_dir': str(evidence),
             'wait_timeout': 300}, **extra), env={'MEMDUMP_SERVICE_URL': url, 'MEMDUMP_SERVICE_TOKEN': TOKEN})
        assert result.rc == 0, result.stdout + result.stderr
        with open(os.path.join(str(evidence), label, 'manifest.json')) as f:
            (entry,) = json.load(f)['entries']
        assert entry['collected'], entry
        image = os.path.join(str(evidence), label, entry['evidence_file'])
        assert sha256_file(image) == entry['sha256']
        with open(image, 'rb') as f:
            return entry, f.read(8)

    # An earlier deployment as root, with one image on disk.
    deploy(memdump_service_user='root', memdump_service_group='root')
    assert ssh('systemctl show -p User --value memdump.service') == 'root'
    before, magic = acquire('IR-SYSTEMD-ROOT', tmp_path / 'evidence-root', method='memory-only')
    assert magic[:4] == b'\x7fELF'
    assert ssh('stat -c %U /var/lib/memdump/state.sqlite') == 'root'

    # The default: user memdump, in group libvirt, no capabilities.
    taken_over = deploy()
    assert taken_over.stats['hv-systemd']['changed'] > 0
    assert ssh('systemctl is-active memdump.service') == 'active'
    main_pid = ssh('systemctl show -p MainPID --value memdump.service')
    assert ssh('ps -o user= -p %s' % main_pid) == 'memdump'
    assert 'libvirt' in ssh('id -nG memdump').split()
    assert ssh('grep ^CapEff /proc/%s/status' % main_pid).split()[1] == '0000000000000000'
    assert ssh('stat -c %U /var/lib/memdump/state.sqlite') == 'memdump'
    status, health = http_json(url, 'GET', '/health')
    assert status == 200 and health['libvirt']['connected'], health

    # The root-era record and image are still the service's: listed, reused, downloaded again intact.
    again = acquire('IR-SYSTEMD-ROOT', tmp_path / 'evidence-root-again', method='memory-only')[0]
    assert again['dump_id'] == before['dump_id'] and again['sha256'] == before['sha256']

    # As memdump: ELF through the FIFO, kdump in a file that libvirtd writes, and a live dump.
    assert acquire('IR-SYSTEMD-ELF', tmp_path / 'evidence-elf', method='memory-only')[1][:4] == b'\x7fELF'
    assert acquire('IR-SYSTEMD-KDUMP', tmp_path / 'evidence-kdump', method='memory-only', format='kdump-zlib')[1] == b'KDUMP   '
    live, magic = acquire('IR-SYSTEMD-LIVE', tmp_path / 'evidence-live', method='live')
    assert magic[:4] == b'QEVM' and live['method'] == 'live'
    owners = ssh('stat -c "%U %a" /var/lib/memdump/dumps/*').splitlines()
    assert owners and set(owners) == {'memdump 600'}, owners

    # The unit's exposure as systemd measures it (docs/reliability.md quotes the number).
    security = ssh('systemd-analyze security --no-pager memdump.service')
    exposure = float(re.search(r'Overall exposure level for memdump.service: ([0-9.]+)', security).group(1))
    assert exposure <= 1.5, security  # measured 1.3 (root: 1.8)

    unchanged = deploy()
    assert unchanged.stats['hv-systemd']['changed'] == 0, unchanged.stdout
