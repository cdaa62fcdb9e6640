"""Reliability (issue 8): concurrency and load on the real memdump service.

- 20 simultaneous triggers for the same VM and label (real QEMU guest) create exactly one dump;
- 50 VMs queued at once (libvirt test driver) never run more than the parallel cap;
- the cap also holds on real guests whose dumps take seconds.
"""
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx

FINAL = ('completed', 'failed')


def post_dumps(url, body, token=None, barrier=None):
    """POST /api/dumps; with a barrier, all threads send at the same instant. Returns (status, JSON)."""
    req = urllib.request.Request(url + '/api/dumps', data=json.dumps(body).encode(), method='POST',
                                 headers={'Content-Type': 'application/json'})
    if token:
        req.add_header('Authorization', 'Bearer ' + token)
    if barrier is not None:
        barrier.wait(30)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def list_dumps(svc, query=''):
    status, body = svc.api('GET', '/api/dumps' + query)
    assert status == 200, body
    return body['dumps']


def wait_all_final(svc, wait_until, timeout=300, query=''):
    def all_final():
        dumps = list_dumps(svc, query)
        return dumps if dumps and all(d['state'] in FINAL for d in dumps) else None
    return wait_until(all_final, timeout, interval=0.2, what='all dumps to finish')


def max_overlap(records):
    """The largest number of dumps whose [started_at, finished_at] intervals overlap at one instant."""
    events = []
    for rec in records:
        if rec['started_at'] and rec['finished_at']:
            events.append((rec['started_at'], 1))
            events.append((rec['finished_at'], -1))
    # ISO 8601 UTC strings of one format sort as times; an end sorts before a start at the same instant.
    events.sort(key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _when, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


class RunningSampler(threading.Thread):
    """Polls the service as fast as it answers and records how many dumps it reports running."""

    def __init__(self, svc):
        super().__init__(daemon=True)
        self.svc = svc
        self.samples = []
        self.stop_event = threading.Event()

    def run(self):
        headers = {'Authorization': 'Bearer ' + self.svc.token} if self.svc.token else {}
        with httpx.Client(base_url=self.svc.url, timeout=30, headers=headers) as client:
            while not self.stop_event.is_set():
                running = client.get('/api/dumps', params={'state': 'running'}).json()['dumps']
                health = client.get('/health').json()['queue']
                self.samples.append((len(running), health['running'], health['queued']))
                time.sleep(0.005)

    def stop(self):
        self.stop_event.set()
        self.join(30)


def test_20_concurrent_identical_triggers_create_one_dump(memdump_service, wait_until):
    vm = os.environ['MEMDUMP_TEST_VM']
    svc = memdump_service()
    label = 'IR-2026-0820'
    barrier = threading.Barrier(20)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _i: post_dumps(svc.url, {'vms': [vm], 'label': label}, barrier=barrier),
                                range(20)))
    assert all(status == 202 for status, _body in results), results
    records = [body['dumps'][0] for _status, body in results]
    ids = {rec['dump_id'] for rec in records}
    assert len(ids) == 1, 'concurrent identical requests created %d dumps: %s' % (len(ids), sorted(ids))
    assert sum(1 for rec in records if rec['created']) == 1, [rec['created'] for rec in records]
    done = wait_all_final(svc, wait_until, query='?vm=%s' % vm)
    assert len(done) == 1 and done[0]['state'] == 'completed', done
    # A second storm after completion reuses the completed dump under the label: nothing new.
    barrier = threading.Barrier(20)
    with ThreadPoolExecutor(20) as pool:
        again = list(pool.map(lambda _i: post_dumps(svc.url, {'vms': [vm], 'label': label}, barrier=barrier),
                              range(20)))
    assert {body['dumps'][0]['dump_id'] for _s, body in again} == ids
    assert not any(body['dumps'][0]['created'] for _s, body in again)
    assert len(list_dumps(svc)) == 1
    assert sorted(os.listdir(svc.dump_dir)) == [os.path.basename(done[0]['dump_path'])]


def test_20_concurrent_requests_with_one_request_id(memdump_service, test_driver_uri, wait_until):
    """A retried request (same request_id) racing itself 20 times creates the dumps once."""
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']))
    barrier = threading.Barrier(20)
    body = {'vms': ['web01', 'db01'], 'request_id': 'retry-8f2c'}
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _i: post_dumps(svc.url, body, barrier=barrier), range(20)))
    assert all(status == 202 for status, _b in results), results
    id_sets = {tuple(d['dump_id'] for d in b['dumps']) for _s, b in results}
    assert len(id_sets) == 1, id_sets
    wait_all_final(svc, wait_until)
    assert len(list_dumps(svc)) == 2


def test_50_vms_queued_never_exceed_cap(memdump_service, test_driver_uri, wait_until):
    cap = 3
    names = ['load%02d' % i for i in range(50)]
    svc = memdump_service(libvirt_uri=test_driver_uri(names), extra_args=['--max-parallel', str(cap)])
    sampler = RunningSampler(svc)
    sampler.start()
    try:
        # 50 single-VM requests at once (as 50 plays would), not one request with 50 VMs.
        barrier = threading.Barrier(50)
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda name: post_dumps(svc.url, {'vms': [name]}, barrier=barrier), names))
        assert all(status == 202 and body['dumps'][0]['created'] for status, body in results), results
        done = wait_all_final(svc, wait_until, timeout=240)
    finally:
        sampler.stop()
    assert len(done) == 50
    assert all(d['state'] == 'completed' for d in done), [(d['vm'], d['state'], d['message']) for d in done
                                                          if d['state'] != 'completed']
    assert len(sampler.samples) >= 5, sampler.samples
    peak_listed = max(s[0] for s in sampler.samples)
    peak_health = max(s[1] for s in sampler.samples)
    peak_overlap = max_overlap(done)
    print('50 VMs, cap %d: %d samples, peak running listed %d, in /health %d, peak overlap of records %d, '
          'peak queued %d' % (cap, len(sampler.samples), peak_listed, peak_health, peak_overlap,
                              max(s[2] for s in sampler.samples)))
    assert peak_listed <= cap and peak_health <= cap, sampler.samples
    assert peak_overlap <= cap, 'records show %d dumps running at once (cap %d)' % (peak_overlap, cap)
    assert len({d['dump_path'] for d in done}) == 50


def test_cap_holds_on_real_guests(memdump_service, wait_until):
    """Two real QEMU guests with a cap of 1: one waits while the other is dumped, then runs."""
    vms = [os.environ['MEMDUMP_TEST_VM'], os.environ['MEMDUMP_TEST_VM2']]
    svc = memdump_service(extra_args=['--max-parallel', '1'])
    sampler = RunningSampler(svc)
    sampler.start()
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': vms})
        assert status == 202, body
        done = wait_all_final(svc, wait_until, timeout=300)
    finally:
        sampler.stop()
    assert [d['state'] for d in done] == ['completed'] * 2, [(d['vm'], d['message']) for d in done]
    assert max(s[0] for s in sampler.samples) == 1 and max(s[1] for s in sampler.samples) == 1, sampler.samples
    assert max(s[2] for s in sampler.samples) >= 1, 'never saw a queued dump: %s' % sampler.samples[:20]
    assert max_overlap(done) == 1, done
