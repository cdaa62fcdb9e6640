"""memdump_trigger, memdump_wait and memdump_info through real ansible-playbook against the real service.

The task files are ansible-test style targets in tests/integration/targets/<module>/tasks/main.yml;
this driver starts services with the ``memdump_service`` fixture and includes the targets in a play,
passing the service URL as ``memdump_url``. Real QEMU guests for the image/sha256 flow, libvirt's
test driver where speed matters.
"""
import os
import uuid

from conftest import free_port, sha256_file

TARGETS = os.path.join(os.path.dirname(__file__), 'targets')


def label(prefix='IT'):
    return '%s-%s' % (prefix, uuid.uuid4().hex[:12])


def targets_play(*names):
    tasks = ''.join(
        '    - name: Target %s\n      ansible.builtin.include_tasks: %s\n' % (name, os.path.join(TARGETS, name, 'tasks', 'main.yml'))
        for name in names)
    return '- name: Module targets\n  hosts: localhost\n  gather_facts: false\n  tasks:\n' + tasks


def play(tasks_yaml, defaults=None):
    """A play around task YAML (indented 4 spaces), with module_defaults for the memdump group."""
    text = '- name: Test play\n  hosts: localhost\n  gather_facts: false\n'
    if defaults is not False:
        text += '  module_defaults:\n    group/vmforensics.memdump.memdump:\n      url: "{{ memdump_url }}"\n'
        for key, value in (defaults or {}).items():
            text += '      %s: %s\n' % (key, value)
    return text + '  tasks:\n' + tasks_yaml


def assert_ok(result):
    assert result.rc == 0, 'playbook failed (rc %s):\n%s\n%s' % (result.rc, result.stdout[-6000:], result.stderr[-3000:])


def test_targets_on_qemu(memdump_service, run_playbook):
    """check mode -> real run -> same label not changed; wait to completion; sha256 matches the files; info views."""
    svc = memdump_service()
    vms = [os.environ['MEMDUMP_TEST_VM'], os.environ['MEMDUMP_TEST_VM2']]
    first, second = label(), label()
    result = run_playbook(targets_play('memdump_trigger'),
                          extra_vars={'memdump_url': svc.url, 'memdump_vms': vms, 'memdump_label': first})
    assert_ok(result)
    result = run_playbook(targets_play('memdump_wait', 'memdump_info'),
                          extra_vars={'memdump_url': svc.url, 'memdump_vms': vms, 'memdump_label': second})
    assert_ok(result)
    # The re-run created nothing: one dump per VM and label on the service.
    status, answer = svc.api('GET', '/api/dumps?label=%s' % first)
    assert status == 200 and sorted(d['vm'] for d in answer['dumps']) == sorted(vms)
    waited = result.task_results('Wait until they are done')
    assert waited['completed'] == vms
    for record in waited['dumps']:
        assert record['dump_path'].startswith(svc.dump_dir)
        assert os.path.getsize(record['dump_path']) == record['size_bytes']
        assert sha256_file(record['dump_path']) == record['sha256']
        # The default, method auto: these guests can migrate, so their dumps are live.
        assert (record['method'], record['method_requested'], record['format']) == ('live', 'auto', 'qemu-migration'), record
        with open(record['dump_path'], 'rb') as f:
            assert f.read(4) == b'QEVM'


def test_wait_timeout_names_pending_vm(memdump_service, run_playbook):
    """A 2 GiB guest dumps for seconds (memory-only; a live dump of an idle guest takes a fraction of a second): a 0.5 s
    wait fails naming it with its state and progress."""
    svc = memdump_service()
    large = os.environ['MEMDUMP_TEST_VM_LARGE']
    result = run_playbook(play('''
    - name: Trigger the large guest
      vmforensics.memdump.memdump_trigger:
        vms: ["{{ vm }}"]
        label: "{{ lbl }}"
        method: memory-only
      register: trigger
    - name: Wait too briefly
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 0.5
      ignore_errors: true
    - name: Wait for real
      vmforensics.memdump.memdump_wait:
        vms: ["{{ vm }}"]
        label: "{{ lbl }}"
        wait_timeout: 300
'''), extra_vars={'memdump_url': svc.url, 'vm': large, 'lbl': label()})
    assert_ok(result)
    short = result.task_results('Wait too briefly')
    assert short['failed'] and 'timed out' in short['msg'], short
    assert large in short['msg'] and svc.url in short['msg']
    assert ('queued' in short['msg'] or 'running' in short['msg']) and '%' in short['msg']
    assert short['pending'] == [large] and short['completed'] == []
    assert result.task_results('Wait for real')['completed'] == [large]


def test_unknown_vm_fails_wait_naming_it(memdump_service, run_playbook, test_driver_uri):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']))
    result = run_playbook(play('''
    - name: Trigger a known and an unknown VM
      vmforensics.memdump.memdump_trigger:
        vms: [web01, no-such-vm-4242]
      register: trigger
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 60
      ignore_errors: true
    - name: Wait allowing failures
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dump_ids }}"
        allow_failed: true
'''), extra_vars={'memdump_url': svc.url})
    assert_ok(result)
    failed = result.task_results('Wait')
    # The failed VM is named; the one that completed is not reported as failed (the typo's message lists the
    # host's domains, web01 among them, so that the name can be corrected).
    assert failed['failed'] and 'no-such-vm-4242' in failed['msg'] and 'web01 (dump' not in failed['msg']
    assert 'check the name: the domains there are web01' in failed['msg']
    assert failed['failed_vms'] == ['no-such-vm-4242'] and failed['completed'] == ['web01']
    allowed = result.task_results('Wait allowing failures')
    assert not allowed.get('failed') and allowed['failed_vms'] == ['no-such-vm-4242']


def test_stopped_service_message_names_url(memdump_service, run_playbook, test_driver_uri):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']))
    svc.stop()
    result = run_playbook(play('''
    - name: Trigger
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
      ignore_errors: true
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: ["0123456789abcdef0123456789abcdef"]
        wait_timeout: 1
        wait_sleep: 0.2
      ignore_errors: true
    - name: Info
      vmforensics.memdump.memdump_info:
      register: info
'''), extra_vars={'memdump_url': svc.url})
    assert_ok(result)
    for task in ('Trigger', 'Wait'):
        res = result.task_results(task)
        assert res['failed'] and svc.url in res['msg'], res
    assert 'cannot reach the memdump service' in result.task_results('Trigger')['msg']
    info = result.task_results('Info')
    assert info['service']['status'] == 'unavailable' and svc.url in info['service']['error']


def test_token(memdump_service, run_playbook, test_driver_uri):
    token = 'tok-%s' % uuid.uuid4().hex
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=token)
    tasks = '''
    - name: Trigger
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        label: "{{ lbl }}"
      register: trigger
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 60
        allow_failed: true
'''
    lbl = label()
    rejected = run_playbook(play(tasks), extra_vars={'memdump_url': svc.url, 'lbl': lbl})
    assert rejected.rc != 0
    res = rejected.task_results('Trigger')
    assert res['failed'] and 'set token or MEMDUMP_SERVICE_TOKEN' in res['msg'] and '401' in res['msg']
    accepted = run_playbook(play(tasks, defaults={'token': '"{{ tok }}"'}),
                            extra_vars={'memdump_url': svc.url, 'lbl': lbl, 'tok': token})
    assert_ok(accepted)
    waited = accepted.task_results('Wait')
    assert waited['completed'] + waited['failed_vms'] == ['web01']
    # The environment variable works too, and the token never shows in the output.
    by_env = run_playbook(play(tasks), extra_vars={'memdump_url': svc.url, 'lbl': lbl},
                          env={'MEMDUMP_SERVICE_TOKEN': token})
    assert_ok(by_env)
    assert by_env.task_results('Trigger')['changed'] is False
    for out in (accepted.stdout, by_env.stdout):
        assert token not in out


def test_seed_core_service_polls(core_service, run_playbook):
    """The seed's core API (its test double): no created, marker or features, so trigger infers changed
    and wait falls back to interval polling."""
    svc, vm = core_service(), os.environ['MEMDUMP_TEST_VM']
    result = run_playbook(play('''
    - name: Trigger
      vmforensics.memdump.memdump_trigger:
        vms: ["{{ vm }}"]
      register: trigger
    - name: Trigger again while in flight
      vmforensics.memdump.memdump_trigger:
        vms: ["{{ vm }}"]
      register: again
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_sleep: 0.3
        wait_timeout: 120
      register: waited
    - name: Info
      vmforensics.memdump.memdump_info:
      register: info
'''), extra_vars={'memdump_url': svc.url, 'vm': vm})
    assert_ok(result)
    trigger = result.task_results('Trigger')
    assert trigger['changed'] is True and trigger['dumps'][0]['created'] is True
    waited = result.task_results('Wait')
    assert waited['completed'] == [vm]
    with open(waited['dumps'][0]['dump_path'], 'rb') as image:
        assert image.read(4) == b'\x7fELF'  # a real memory-only dump through libvirt (the seed's records carry no sha256)
    info = result.task_results('Info')
    assert info['service']['status'] == 'ok' and len(info['dumps']) >= 1
    log = svc.read_log()
    assert 'wait=' not in log and 'marker=' not in log  # it never asked the service to hold a request


def test_tls_ca_path_and_validate_certs(memdump_service, run_playbook, test_driver_uri, self_signed_cert):
    cert, key = self_signed_cert
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), extra_args=['--tls-cert', cert, '--tls-key', key])
    assert svc.url.startswith('https://')
    result = run_playbook(play('''
    - name: Untrusted certificate
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
      ignore_errors: true
    - name: Trusted through ca_path
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        ca_path: "{{ ca }}"
    - name: Info without validation
      vmforensics.memdump.memdump_info:
        validate_certs: false
    - name: Info with the untrusted certificate
      vmforensics.memdump.memdump_info:
    - name: Info with the untrusted certificate, failing on it
      vmforensics.memdump.memdump_info:
        fail_on_unavailable: true
      ignore_errors: true
'''), extra_vars={'memdump_url': svc.url, 'ca': cert})
    assert_ok(result)
    untrusted = result.task_results('Untrusted certificate')
    assert untrusted['failed'] and svc.url in untrusted['msg'] and 'set ca_path' in untrusted['msg'], untrusted
    assert result.task_results('Trusted through ca_path')['changed'] is True
    assert result.task_results('Info without validation')['service']['status'] == 'ok'
    # An untrusted certificate is not a failure of memdump_info, but the play log says so.
    info = result.task_results('Info with the untrusted certificate')
    assert not info.get('failed') and info['service']['status'] == 'unavailable' and info['dumps'] == []
    assert any(svc.url in str(w) and 'not trusted' in str(w) for w in info.get('warnings', [])), info
    failing = result.task_results('Info with the untrusted certificate, failing on it')
    assert failing['failed'] and svc.url in failing['msg'] and 'not trusted' in failing['msg'], failing


def test_summary_reason_and_host_vms_come_from_the_service(memdump_service, run_playbook, test_driver_uri):
    """memdump_wait's per-VM summary and failure_message, the reason decided from the service's VM listing,
    and memdump_info's host_vms (GET /api/vms)."""
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']))
    lbl = label()
    result = run_playbook(play('''
    - name: Trigger a known and an unknown VM
      vmforensics.memdump.memdump_trigger:
        vms: [web01, no-such-vm-4242]
        label: "{{ lbl }}"
      register: trigger
    - name: Wait allowing failures
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        allow_failed: true
        wait_timeout: 60
    - name: Trigger again (reused)
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        label: "{{ lbl }}"
      register: again
    - name: Wait again
      vmforensics.memdump.memdump_wait:
        dumps: "{{ again.dumps }}"
    - name: List the host's VMs and the label's dumps
      vmforensics.memdump.memdump_info:
        label: "{{ lbl }}"
        list_vms: true
'''), extra_vars={'memdump_url': svc.url, 'lbl': lbl})
    assert_ok(result)
    waited = result.task_results('Wait allowing failures')
    web01, typo = waited['summary']['web01'], waited['summary']['no-such-vm-4242']
    assert web01['state'] == 'completed' and web01['dump'] == 'new' and web01['reason'] is None
    assert web01['sha256'] and web01['size_bytes'] > 0 and web01['dump_id'] == waited['dump_ids']['web01']
    assert typo['state'] == 'failed' and typo['reason'] == 'no_such_vm'
    message = waited['failure_message']
    assert message.startswith('Memory acquisition failed for no-such-vm-4242: no-such-vm-4242 (dump %s)' % typo['dump_id'])
    assert 'no such VM on this host' in message and 'retry only' not in message
    assert result.task_results('Wait again')['summary']['web01']['dump'] == 'reused'
    assert result.task_results('Wait again')['failure_message'] is None
    info = result.task_results("List the host's VMs and the label's dumps")
    assert [(vm['name'], vm['state'], vm['active']) for vm in info['host_vms']] == [('db01', 'running', True), ('web01', 'running', True)]
    failed = [d for d in info['dumps'] if d['state'] == 'failed']
    assert [d['reason'] for d in failed] == ['no_such_vm']


def test_info_list_vms_fails_naming_the_url_when_the_service_cannot_say(run_playbook):
    url = 'http://127.0.0.1:%d' % free_port()
    result = run_playbook(play('''
    - name: List the host's VMs
      vmforensics.memdump.memdump_info:
        list_vms: true
      ignore_errors: true
'''), extra_vars={'memdump_url': url})
    assert_ok(result)
    listed = result.task_results("List the host's VMs")
    assert listed['failed'] and 'cannot say which VMs the host of the memdump service at %s runs' % url in listed['msg']
