# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_collect: record a dump in the incident's custody log and collect its image
to the controller (documentation: plugins/modules/memdump_collect.py). Runs on the controller only."""

from __future__ import annotations

import os

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpError
from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import generate_collect_argspec
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._action import MemdumpActionBase
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as log_
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_names as names
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_download import download
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_lock import FileLock
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._service_rules import default_info, service_info

CustodyError = names.CustodyError


def check_record(record, vm, dump_id, rules=None):
    """The service's record must be the completed dump of the VM that was asked for."""
    if not isinstance(record, dict):
        raise CustodyError('the service answered no record for dump %s' % dump_id)
    if record.get('dump_id') != dump_id:
        raise CustodyError('asked for dump %s, the service answered the record of dump %r: refused'
                           % (dump_id, record.get('dump_id')))
    if record.get('vm') != vm:
        raise CustodyError('the service\'s record of dump %s names VM %r, but VM %r was asked for: refused '
                           '(nothing written)' % (dump_id, record.get('vm'), vm))
    if record.get('state') != 'completed':
        raise CustodyError('dump %s of VM %s is %s, not completed' % (dump_id, vm, record.get('state')))
    sha = record.get('sha256')
    if not isinstance(sha, str) or not names.SHA256_RE.match(sha):
        raise CustodyError('the record of dump %s has no valid SHA-256 (%r)' % (dump_id, sha))
    size = record.get('size_bytes')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CustodyError('the record of dump %s has no valid size (%r)' % (dump_id, size))
    names.extension_of(record.get('format') or 'elf', rules)
    return record


class ActionModule(MemdumpActionBase):

    NAME = 'memdump_collect'
    ARGSPEC = generate_collect_argspec(
        evidence_dir=dict(type='path', required=True),
        label=dict(type='str', required=True),
        host=dict(type='str'),
        vm=dict(type='str', required=True),
        dump_id=dict(type='str', required=True),
        record=dict(type='dict'),
        download=dict(type='bool', default=True),
        retries=dict(type='int', default=5),
        retry_delay=dict(type='float', default=1.0),
        signing_key=dict(type='path', no_log=False),
        operator=dict(type='str'),
        collection_version=dict(type='str'),
    )

    def execute(self, args, task_vars):
        vm = names.check_vm_name(args['vm'])
        self.where.update(vm=vm, dump=args['dump_id'])
        dump_id = names.check_dump_id(args['dump_id'])
        host = names.check_host(args.get('host') or task_vars.get('inventory_hostname') or 'localhost')
        record = args.get('record')
        client = None
        if args['download'] or record is None:
            client = self.collect_client(args)
            info = service_info(client)
        else:
            info = default_info()  # the controller does not contact the service
        label = names.check_label(args['label'], info.rules['label'].get('pattern'))
        incident = names.incident_dir(args['evidence_dir'], label, info.rules['label'].get('pattern'))
        if record is not None:
            check_record(record, vm, dump_id, info.rules)
        if client is not None:
            fresh = check_record(client.get_dump(dump_id), vm, dump_id, info.rules)
            if record is not None and (fresh.get('sha256'), fresh.get('size_bytes')) != (record.get('sha256'),
                                                                                         record.get('size_bytes')):
                raise CustodyError('the service\'s record of dump %s changed its SHA-256 or size between the wait and '
                                   'the collection: refused' % dump_id)
            record = dict(record or {}, **fresh)
        rel = names.evidence_relpath(host, vm, dump_id, record.get('format') or 'elf', info.rules)
        dest = os.path.join(incident, rel)
        if args['download']:
            self.where['file'] = dest
        ctx = self.custody_context(args, task_vars)
        out = {'changed': False, 'vm': vm, 'dump_id': dump_id, 'evidence_file': rel if args['download'] else None,
               'path': dest if args['download'] else None, 'sha256': record['sha256'],
               'size_bytes': record['size_bytes'], 'downloaded': False, 'reused': False, 'resumes': 0,
               'custody_log': os.path.join(incident, log_.LOG_NAME), 'events': [],
               'signed': bool(args.get('signing_key')), 'rules_published': info.published, 'custody_head': None}
        if not args.get('signing_key'):
            self.warn('no signing key (memdump_acquire_signing_key / -e signing_key=PATH): the custody events of %s '
                      'are not signed' % vm)
        if not info.published and client is not None:
            self.warn('the service at %s does not publish its rules in /health (an older version): its documented '
                      'defaults were used for the label and the file extension' % client.url)

        if self.check_mode:
            known, head = self._known(incident, dump_id, label)
            out['custody_head'] = head
            out['changed'] = 'acquired' not in known or (args['download'] and 'verified' not in known) \
                or (args['download'] and not os.path.exists(dest))
            return out

        with log_.CustodyLog(incident, args.get('signing_key')) as log:
            if 'acquired' not in log_.by_dump(log.events()).get(dump_id, {}):
                log.append(log_.acquired_event(label, host, vm, dump_id, record, ctx))
            log.write_manifest()
            appended = list(log.appended)
            out['custody_head'] = log.head(label)
        if args['download']:
            stats = self._fetch(client, record, dest, args)
            out.update(stats)
            with log_.CustodyLog(incident, args.get('signing_key')) as log:
                kinds = log_.by_dump(log.events()).get(dump_id, {})
                if 'collected' not in kinds or 'verified' not in kinds:
                    size, sha = log_.sha256_file(dest)  # what is on disk now, under its final name
                    if (size, sha) != (record['size_bytes'], record['sha256']):
                        raise CustodyError('%s does not hash to what was received (%d bytes, %s): the disk or another '
                                           'process changed it' % (dest, size, sha))
                    base = log_.base_event('collected', label, host, vm, dump_id, record, ctx)
                    if 'collected' not in kinds:
                        log.append(dict(base, evidence_file=rel, service_sha256=record['sha256'],
                                        reused_existing_file=stats['reused'], resumes=stats['resumes'],
                                        source_url=client.url + '/api/dumps/%s/file' % dump_id))
                    if 'verified' not in kinds:
                        log.append(dict(log_.base_event('verified', label, host, vm, dump_id, record, ctx),
                                        evidence_file=rel, size_bytes=size, sha256=sha))
                log.write_manifest()
                appended += log.appended
                out['custody_head'] = log.head(label)
            out['marked_collected'], out['witnessed_by_service'] = self._report(client, info, record, out['custody_head'])
        out['events'] = [{'seq': e['seq'], 'event': e['event']} for e in appended]
        out['changed'] = bool(appended) or out['downloaded']
        return out

    def _report(self, client, info, record, head):
        """Tells a service that offers it that this image is safe on the controller (``collected``) and
        where the custody log stands (``custody_head``, kept by the service as a witness). A failure
        leaves the image on the host and the head unwitnessed there: a warning, not an error."""
        if 'collected' not in info.features:
            self.warn('the service at %s does not take collected reports (an older version): its retention will not '
                      'remove the image of %s, and it keeps no custody head' % (client.url, record['vm']))
            return False, False
        witnessed = info.keeps_custody_heads
        if not witnessed:
            self.warn('the service at %s does not keep custody heads (an older version): a cut tail of the custody log '
                      'can be detected only through InfluxDB (the callback) or a head you recorded' % client.url)
        known = [(h.get('label'), h.get('seq'), h.get('hash')) for h in record.get('custody_heads') or []
                 if isinstance(h, dict)]
        if record.get('collected_at') and (not witnessed or (head['label'], head['seq'], head['hash']) in known):
            return True, witnessed
        try:
            client.mark_collected(record['dump_id'], record['sha256'], head if witnessed else None)
            return True, witnessed
        except MemdumpError as e:
            self.warn('the image of %s was collected and verified, but telling the service so failed (%s): its '
                      'retention will not remove it and it holds no custody head of this run' % (record['vm'], e))
            return False, False

    @staticmethod
    def _known(incident, dump_id, label):
        if not os.path.exists(os.path.join(incident, log_.LOG_NAME)):
            return {}, None
        log = log_.CustodyLog(incident, create=False)
        lines = log.lines()
        return log_.by_dump(log.events()).get(dump_id, {}), log_.head_of(label, lines)

    @staticmethod
    def _fetch(client, record, dest, args):
        """The image at dest: reused if identical, never overwritten, else downloaded."""
        log_.make_dir(os.path.dirname(dest))
        out = {'downloaded': False, 'reused': False, 'resumes': 0}
        lock_path = os.path.join(os.path.dirname(dest), '.%s.lock' % os.path.basename(dest))
        with FileLock(lock_path):
            if os.path.lexists(dest):
                if os.path.islink(dest) or not os.path.isfile(dest):
                    raise CustodyError('%s exists and is not a regular file: refused' % dest)
                size, sha = log_.sha256_file(dest)
                if (size, sha) != (record['size_bytes'], record['sha256']):
                    raise CustodyError(
                        '%s already exists with other content (%d bytes, SHA-256 %s; the service has %d bytes, %s): '
                        'an evidence file is never overwritten' % (dest, size, sha, record['size_bytes'], record['sha256']))
                out['reused'] = True
                return out
            stats = download(lambda offset: client.open_file(record['dump_id'], offset), dest, record['size_bytes'],
                             record['sha256'], retries=args['retries'], retry_delay=args['retry_delay'])
        out.update(downloaded=True, resumes=stats['resumes'], seconds=stats['seconds'],
                   bytes_received=stats['bytes_received'])
        return out
