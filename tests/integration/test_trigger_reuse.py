"""memdump_trigger follows the real service's reuse rules: it sends one request and reports the answer.

The rules live in the service alone (service/memdump_service/jobs.py); the unit tests' fake does not
reimplement them, so whether the module reports them right (changed, created, check mode through
``dry_run``) is tested here, against real services: libvirt's test driver where speed matters, the
stack's large QEMU guest where a dump must stay in flight.
"""
import os
import uuid


def label():
    return 'IT-%s' % uuid.uuid4().hex[:12]


def play(tasks_yaml):
    """A play around task YAML (indented 4 spaces), with the service URL set for the memdump group."""
    return ('- name: Test play\n  hosts: localhost\n  gather_facts: false\n  module_defaults:\n'
            '    group/vmforensics.memdump.memdump:\n      url: "{{ memdump_url }}"\n  tasks:\n' + tasks_yaml)


def assert_ok(result):
    assert result.rc == 0, 'playbook failed (rc %s):\n%s\n%s' % (result.rc, result.stdout[-6000:], result.stderr[-3000:])


def dumps_on(svc, query=''):
    status, answer = svc.api('GET', '/api/dumps' + query)
    assert status == 200, answer
    return answer['dumps']


def test_reuse_rules_and_check_mode_come_from_the_service(memdump_service, run_playbook, test_driver_uri):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']))
    lbl = label()
    result = run_playbook(play('''
    - name: First dumps (one of a VM that does not exist, so it fails)
      vmforensics.memdump.memdump_trigger:
        vms: [web01, no-such-vm]
        label: "{{ lbl }}"
      register: first
    - name: Wait for the first dumps
      vmforensics.memdump.memdump_wait:
        dumps: "{{ first.dumps }}"
        wait_timeout: 60
        allow_failed: true
    - name: Predict the second run
      vmforensics.memdump.memdump_trigger:
        vms: [web01, no-such-vm, db01]
        label: "{{ lbl }}"
      check_mode: true
      register: predicted
    - name: Count the dumps after check mode
      vmforensics.memdump.memdump_info:
      register: after_check
    - name: Second run
      vmforensics.memdump.memdump_trigger:
        vms: [web01, no-such-vm, db01]
        label: "{{ lbl }}"
      register: second
    - name: Forced run
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        label: "{{ lbl }}"
        force: true
      register: forced
    - name: Wait for all
      vmforensics.memdump.memdump_wait:
        vms: [web01, no-such-vm, db01]
        label: "{{ lbl }}"
        wait_timeout: 60
        allow_failed: true
'''), extra_vars={'memdump_url': svc.url, 'lbl': lbl})
    assert_ok(result)
    first = result.task_results('First dumps (one of a VM that does not exist, so it fails)')
    assert first['changed'] is True and first['created'] == ['web01', 'no-such-vm']
    # Check mode: the service's dry run says web01's completed dump is reused, the failed VM and db01
    # get new dumps; nothing was created.
    predicted = result.task_results('Predict the second run')
    assert predicted['changed'] is True and predicted['created'] == ['no-such-vm', 'db01']
    assert predicted['dump_ids'] == {'web01': first['dump_ids']['web01'], 'no-such-vm': None, 'db01': None}
    assert predicted['request_id'] is None
    assert len(result.task_results('Count the dumps after check mode')['dumps']) == 2
    # The real run does what check mode said.
    second = result.task_results('Second run')
    assert second['changed'] is True and second['created'] == predicted['created']
    assert second['dump_ids']['web01'] == first['dump_ids']['web01']
    assert second['dump_ids']['no-such-vm'] != first['dump_ids']['no-such-vm']
    assert [d['created'] for d in second['dumps']] == [False, True, True]
    forced = result.task_results('Forced run')
    assert forced['changed'] is True and forced['dump_ids']['web01'] not in (first['dump_ids']['web01'], None)
    assert len(dumps_on(svc, '?label=%s' % lbl)) == 5
    waited = result.task_results('Wait for all')
    assert waited['dump_ids']['web01'] == forced['dump_ids']['web01']


def test_same_label_again_is_not_changed(memdump_service, run_playbook, test_driver_uri):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']))
    tasks = '''
    - name: Trigger
      vmforensics.memdump.memdump_trigger:
        vms: [web01, db01]
        label: "{{ lbl }}"
      register: trigger
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 60
'''
    lbl = label()
    first = run_playbook(play(tasks), extra_vars={'memdump_url': svc.url, 'lbl': lbl})
    assert_ok(first)
    again = run_playbook(play(tasks), extra_vars={'memdump_url': svc.url, 'lbl': lbl})
    assert_ok(again)
    rerun = again.task_results('Trigger')
    assert rerun['changed'] is False and rerun['created'] == [] and rerun['request_id'] is None
    assert rerun['dump_ids'] == first.task_results('Trigger')['dump_ids']
    assert len(dumps_on(svc)) == 2


def test_in_flight_dump_of_another_label_is_never_handed_out(memdump_service, run_playbook):
    """A 2 GiB guest dumps for seconds (memory-only): a forced request of another incident (label) gets a dump of its own,
    queued behind the one in flight (issue 24: one incident never receives another's image)."""
    svc = memdump_service()
    large = os.environ['MEMDUMP_TEST_VM_LARGE']
    result = run_playbook(play('''
    - name: Trigger the large guest
      vmforensics.memdump.memdump_trigger:
        vms: ["{{ vm }}"]
        label: "{{ lbl }}"
        method: memory-only
      register: trigger
    - name: Force another label while it runs
      vmforensics.memdump.memdump_trigger:
        vms: ["{{ vm }}"]
        label: "{{ lbl }}-b"
        method: memory-only
        force: true
      register: forced
    - name: Wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps + forced.dumps }}"
        wait_timeout: 300
'''), extra_vars={'memdump_url': svc.url, 'vm': large, 'lbl': label()})
    assert_ok(result)
    forced = result.task_results('Force another label while it runs')
    assert forced['changed'] is True and forced['dumps'][0]['created'] is True and forced['dumps'][0]['state'] == 'queued'
    assert forced['dump_ids'] != result.task_results('Trigger the large guest')['dump_ids']
    assert [d['state'] for d in result.task_results('Wait')['dumps']] == ['completed', 'completed']


def test_seed_core_service_check_mode_sends_nothing(core_service, run_playbook, test_driver_uri):
    """A service without the dry_run feature would ignore it and dump: check mode predicts every VM created."""
    svc = core_service(libvirt_uri=test_driver_uri(['web01']))
    result = run_playbook(play('''
    - name: Trigger in check mode
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        label: "{{ lbl }}"
      check_mode: true
      register: predicted
'''), extra_vars={'memdump_url': svc.url, 'lbl': label()})
    assert_ok(result)
    predicted = result.task_results('Trigger in check mode')
    assert predicted['changed'] is True and predicted['created'] == ['web01']
    assert predicted['dump_ids'] == {'web01': None}
    assert dumps_on(svc) == []
    assert '"POST /api/dumps' not in svc.read_log()
