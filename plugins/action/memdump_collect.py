# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_collect: record a dump in the incident's custody log and collect its image
to the controller (documentation: plugins/modules/memdump_collect.py). Runs on the controller only."""

from __future__ import annotations

import getpass
import json
import os
import socket

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    DEFAULT_TIMEOUT, DEFAULT_URL, MemdumpClient, MemdumpError)
from ansible_collections.vmforensics.memdump.plugins.module_utils import _custody as custody

CONNECTION_SPEC = dict(
    url=dict(type='str'),
    token=dict(type='str', no_log=True),
    request_timeout=dict(type='float'),
    validate_certs=dict(type='bool', default=True),
    ca_path=dict(type='path'),
)
CUSTODY_SPEC = dict(
    evidence_dir=dict(type='path', required=True),
    label=dict(type='str', required=True),
    host=dict(type='str'),
    signing_key=dict(type='path', no_log=False),
    operator=dict(type='str'),
    collection_version=dict(type='str'),
)


def collection_version():
    """The version of this collection (MANIFEST.json when installed, galaxy.yml in a checkout)."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
    try:
        with open(os.path.join(root, 'MANIFEST.json')) as f:
            return json.load(f)['collection_info']['version']
    except (IOError, ValueError, KeyError):
        pass
    try:
        with open(os.path.join(root, 'galaxy.yml')) as f:
            for line in f:
                if line.startswith('version:'):
                    return line.split(':', 1)[1].strip().strip('"\'')
    except IOError:
        pass
    return 'unknown'


def custody_context(args, task_vars):
    """Who, where and with what: the fields every event carries."""
    task_vars = task_vars or {}

    def var(*names):
        for name in names:
            value = task_vars.get(name)
            if value not in (None, ''):
                return to_native(value)
        return None
    operator = args.get('operator') or var('tower_user_name', 'awx_user_name')
    if not operator:
        try:
            operator = getpass.getuser()
        except Exception:  # pylint: disable=broad-except
            operator = str(os.getuid())
    return {'operator': operator.strip(), 'awx_job_id': var('tower_job_id', 'awx_job_id'),
            'controller': socket.getfqdn(),
            'collection_version': args.get('collection_version') or collection_version()}


def client_of(args):
    return MemdumpClient(url=args.get('url') or os.environ.get('MEMDUMP_SERVICE_URL') or DEFAULT_URL,
                         token=args.get('token') or os.environ.get('MEMDUMP_SERVICE_TOKEN'),
                         timeout=args.get('request_timeout') or DEFAULT_TIMEOUT,
                         validate_certs=args.get('validate_certs', True), ca_path=args.get('ca_path'))


def check_record(record, vm, dump_id):
    """The service's record must be the completed dump of the VM that was asked for."""
    if not isinstance(record, dict):
        raise custody.CustodyError('the service answered no record for dump %s' % dump_id)
    if record.get('dump_id') != dump_id:
        raise custody.CustodyError('asked for dump %s, the service answered the record of dump %r: refused'
                                   % (dump_id, record.get('dump_id')))
    if record.get('vm') != vm:
        raise custody.CustodyError('the service\'s record of dump %s names VM %r, but VM %r was asked for: refused '
                                   '(nothing written)' % (dump_id, record.get('vm'), vm))
    if record.get('state') != 'completed':
        raise custody.CustodyError('dump %s of VM %s is %s, not completed' % (dump_id, vm, record.get('state')))
    sha = record.get('sha256')
    if not isinstance(sha, str) or not custody.SHA256_RE.match(sha):
        raise custody.CustodyError('the record of dump %s has no valid SHA-256 (%r)' % (dump_id, sha))
    size = record.get('size_bytes')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise custody.CustodyError('the record of dump %s has no valid size (%r)' % (dump_id, size))
    if (record.get('format') or 'elf') not in custody.EXTENSIONS:
        raise custody.CustodyError('the record of dump %s has an unknown format %r' % (dump_id, record.get('format')))
    return record


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    ARGSPEC = dict(CONNECTION_SPEC, **CUSTODY_SPEC)
    ARGSPEC.update(
        vm=dict(type='str', required=True),
        dump_id=dict(type='str', required=True),
        record=dict(type='dict'),
        download=dict(type='bool', default=True),
        retries=dict(type='int', default=5),
        retry_delay=dict(type='float', default=1.0),
    )

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=self.ARGSPEC)
        try:
            result.update(self._collect(args, task_vars or {}))
        except (custody.CustodyError, MemdumpError) as e:
            raise AnsibleActionFail('%s: %s' % (args.get('vm'), to_native(e)))
        return result

    def _collect(self, args, task_vars):
        vm = custody.check_vm_name(args['vm'])
        dump_id = custody.check_dump_id(args['dump_id'])
        label = custody.check_label(args['label'])
        host = custody.check_host(args.get('host') or task_vars.get('inventory_hostname') or 'localhost')
        incident = custody.incident_dir(args['evidence_dir'], label)
        client = None
        record = args.get('record')
        if record is not None:
            check_record(record, vm, dump_id)
        if args['download'] or record is None:
            client = client_of(args)
            fresh = check_record(client.get_dump(dump_id), vm, dump_id)
            if record is not None and (fresh.get('sha256'), fresh.get('size_bytes')) != (record.get('sha256'),
                                                                                         record.get('size_bytes')):
                raise custody.CustodyError('the service\'s record of dump %s changed its SHA-256 or size between the '
                                           'wait and the collection: refused' % dump_id)
            record = dict(record or {}, **fresh)
        rel = custody.evidence_relpath(host, vm, dump_id, record.get('format') or 'elf')
        dest = os.path.join(incident, rel)
        ctx = custody_context(args, task_vars)
        out = {'changed': False, 'vm': vm, 'dump_id': dump_id, 'evidence_file': rel if args['download'] else None,
               'path': dest if args['download'] else None, 'sha256': record['sha256'],
               'size_bytes': record['size_bytes'], 'downloaded': False, 'reused': False, 'resumes': 0,
               'custody_log': os.path.join(incident, custody.LOG_NAME), 'events': [],
               'signed': bool(args.get('signing_key'))}
        if not args.get('signing_key'):
            out['warnings'] = ['no signing key (memdump_acquire_signing_key / -e signing_key=PATH): the custody events '
                               'of %s are not signed' % vm]

        if self._task.check_mode:
            known = self._known(incident, dump_id)
            out['changed'] = 'acquired' not in known or (args['download'] and 'verified' not in known) \
                or (args['download'] and not os.path.exists(dest))
            return out

        with custody.CustodyLog(incident, args.get('signing_key')) as log:
            if 'acquired' not in custody.by_dump(log.events()).get(dump_id, {}):
                log.append(custody.acquired_event(label, host, vm, dump_id, record, ctx))
            log.write_manifest()
            appended = list(log.appended)
        if args['download']:
            stats = self._fetch(client, record, dest, args)
            out.update(stats)
            with custody.CustodyLog(incident, args.get('signing_key')) as log:
                kinds = custody.by_dump(log.events()).get(dump_id, {})
                if 'collected' not in kinds or 'verified' not in kinds:
                    size, sha = custody.sha256_file(dest)  # what is on disk now, under its final name
                    if (size, sha) != (record['size_bytes'], record['sha256']):
                        raise custody.CustodyError('%s does not hash to what was received (%d bytes, %s): the disk or '
                                                   'another process changed it' % (dest, size, sha))
                    base = custody.base_event('collected', label, host, vm, dump_id, record, ctx)
                    if 'collected' not in kinds:
                        event = dict(base, evidence_file=rel, service_sha256=record['sha256'],
                                     reused_existing_file=stats['reused'], resumes=stats['resumes'],
                                     source_url=client.url + '/api/dumps/%s/file' % dump_id)
                        log.append(event)
                    if 'verified' not in kinds:
                        log.append(dict(custody.base_event('verified', label, host, vm, dump_id, record, ctx),
                                        evidence_file=rel, size_bytes=size, sha256=sha))
                log.write_manifest()
                appended += log.appended
            out['marked_collected'] = self._mark_collected(client, record, out)
        out['events'] = [{'seq': e['seq'], 'event': e['event']} for e in appended]
        out['changed'] = bool(appended) or out['downloaded']
        return out

    @staticmethod
    def _mark_collected(client, record, out):
        """Tells a service that offers it that this image is now safe on the controller (its retention
        removes only such images). A failure leaves the image on the host: a warning, not an error."""
        if record.get('collected_at'):
            return True
        try:
            if 'collected' not in client.features():
                return False
            client.mark_collected(record['dump_id'], record['sha256'])
            return True
        except MemdumpError as e:
            out.setdefault('warnings', []).append('the image of %s was collected and verified, but telling the service '
                                                  'so failed (%s): its retention will not remove it' % (record['vm'], e))
            return False

    @staticmethod
    def _known(incident, dump_id):
        path = os.path.join(incident, custody.LOG_NAME)
        if not os.path.exists(path):
            return {}
        log = custody.CustodyLog(incident, create=False)
        return custody.by_dump(log.events()).get(dump_id, {})

    @staticmethod
    def _fetch(client, record, dest, args):
        """The image at dest: reused if identical, never overwritten, else downloaded."""
        custody.make_dir(os.path.dirname(dest))
        out = {'downloaded': False, 'reused': False, 'resumes': 0}
        lock_path = os.path.join(os.path.dirname(dest), '.%s.lock' % os.path.basename(dest))
        with custody.FileLock(lock_path):
            if os.path.lexists(dest):
                if os.path.islink(dest) or not os.path.isfile(dest):
                    raise custody.CustodyError('%s exists and is not a regular file: refused' % dest)
                size, sha = custody.sha256_file(dest)
                if (size, sha) != (record['size_bytes'], record['sha256']):
                    raise custody.CustodyError(
                        '%s already exists with other content (%d bytes, SHA-256 %s; the service has %d bytes, %s): '
                        'an evidence file is never overwritten' % (dest, size, sha, record['size_bytes'], record['sha256']))
                out['reused'] = True
                return out
            stats = custody.download(lambda offset: client.open_file(record['dump_id'], offset), dest,
                                     record['size_bytes'], record['sha256'], retries=args['retries'],
                                     retry_delay=args['retry_delay'])
        out.update(downloaded=True, resumes=stats['resumes'], seconds=stats['seconds'],
                   bytes_received=stats['bytes_received'])
        return out
