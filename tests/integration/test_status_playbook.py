"""`ansible-playbook vmforensics.memdump.status`, the responder's pre-incident check and incident view.

It fails for a host whose service is down (naming the URL); for a label it says whether the incident
is complete, counting the newest dump of each VM and setting apart names that are no VM on the host.
"""
from conftest import free_port, poll_until, stack_env

TOKEN = 'status-playbook-token'


def status(run_playbook, url, token=None, **extra):
    env = {'MEMDUMP_SERVICE_URL': url, 'MEMDUMP_SERVICE_TOKEN': token or ''}
    return run_playbook('vmforensics.memdump.status', extra_vars=dict(memdump_hosts='localhost', **extra), env=env)


def summary(result):
    return result.task_results('Show the dumps per state')['msg']


def dump_and_wait(svc, label, vms):
    status_code, answer = svc.api('POST', '/api/dumps', {'vms': vms, 'label': label}, token=TOKEN)
    assert status_code == 202, answer
    ids = [d['dump_id'] for d in answer['dumps']]

    def finished():
        dummy, listing = svc.api('GET', '/api/dumps?label=%s' % label, token=TOKEN)
        states = {d['dump_id']: d['state'] for d in listing['dumps']}
        return all(states.get(i) in ('completed', 'failed') for i in ids)
    poll_until(finished, 60, what='dumps of %s finished' % label)


def test_status_fails_when_the_service_is_down(run_playbook):
    url = 'http://127.0.0.1:%d' % free_port()
    result = status(run_playbook, url)
    assert result.rc != 0
    failure = result.task_results("Read the service's dumps (fails naming the URL and the reason when the service is unavailable)")
    assert failure.get('failed') is True
    assert url in failure['msg'] and 'unavailable' in failure['msg']
    assert result.stats['localhost']['failures'] == 1


def test_status_of_a_label_counts_the_newest_dump_per_vm(memdump_service, run_playbook):
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token=TOKEN)
    # A typo (no such VM) and a VM that is shut off, next to one that works.
    dump_and_wait(svc, 'IR-STATUS-1', ['web01', 'web01-typo', 'stopped01'])
    first = status(run_playbook, svc.url, TOKEN, label='IR-STATUS-1')
    assert first.rc == 0, first.stdout
    msg = summary(first)
    assert msg['completed'] == ['web01']
    assert msg['not_a_vm_on_this_host'] == ['web01-typo']
    assert [f.split(':')[0] for f in msg['failed']] == ['stopped01']
    assert msg['complete'] is False or msg['complete'] == 'False'

    # The corrected run: the failed VM dumped again (here it still fails: the incident stays open)
    # and the typo left out; a label whose VMs all completed is complete.
    dump_and_wait(svc, 'IR-STATUS-2', ['web01', 'web01-typo'])
    dump_and_wait(svc, 'IR-STATUS-2', ['db01'])
    second = summary(status(run_playbook, svc.url, TOKEN, label='IR-STATUS-2'))
    assert sorted(second['completed']) == ['db01', 'web01']
    assert second['complete'] in (True, 'True')


def test_status_checks_a_tls_service_with_its_ca(memdump_service, run_playbook, self_signed_cert):
    cert, key = self_signed_cert
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token=TOKEN, extra_args=['--tls-cert', cert, '--tls-key', key])
    assert svc.url.startswith('https://')
    # Without the CA the certificate is not trusted: the host fails, naming the setting to give.
    untrusted = status(run_playbook, svc.url, TOKEN)
    assert untrusted.rc != 0
    failure = untrusted.task_results("Read the service's dumps (fails naming the URL and the reason when the service is unavailable)")
    assert 'not trusted' in failure['msg'] and 'ca_path' in failure['msg']
    # The CA as a short extra var, and as the role's inventory variable (a path on the host).
    for extra in ({'service_ca_path': cert}, {'memdump_acquire_service_ca_path': cert}):
        trusted = status(run_playbook, svc.url, TOKEN, **extra)
        assert trusted.rc == 0, trusted.stdout
        assert summary(trusted)['service'].startswith(svc.url + ': ok')
    assert status(run_playbook, svc.url, TOKEN, validate_certs=False).rc == 0
