# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The streaming download of an image to the controller: 1 MiB chunks hashed while received, resumed
with ``Range``, through ``<file>.part``, final name only when size and SHA-256 match.

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpConnectionError
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_names import CustodyError

CHUNK = 1 << 20
# Chunks in flight between the receiving and the writing thread (memory stays at this many MiB).
PIPELINE_CHUNKS = 8
# The writer forces data to disk every this many bytes, while receiving goes on, so the final
# fsync has little left and a large image does not pile up in the page cache.
SYNC_EVERY = 64 << 20
IMAGE_MODE = 0o400
PART_MODE = 0o600


class DownloadError(CustodyError):
    pass


def download(open_file, dest, expected_size, expected_sha256, retries=5, retry_delay=1.0, sleep=time.sleep):
    """:func:`_download`; a file-system error becomes a DownloadError naming the file and what to do."""
    try:
        return _download(open_file, dest, expected_size, expected_sha256, retries, retry_delay, sleep)
    except OSError as e:
        raise DownloadError('writing the image %s on the controller failed: %s (%s); free space or fix the evidence '
                            'file system, then re-run: the download resumes from %s.part'
                            % (dest, e.strerror or e, errno.errorcode.get(e.errno, e.errno), os.path.basename(dest)))


def _download(open_file, dest, expected_size, expected_sha256, retries, retry_delay, sleep):
    """Streams an image to ``dest`` through ``dest + '.part'`` (same dir), resuming with Range.

    ``open_file(offset)`` returns a response (``read``/``readinto``, ``getcode()``, ``headers``, ``close``)
    or raises; a connection error is retried ``retries`` times (resuming where it stopped), anything
    else raises. The SHA-256 is computed while receiving; the ``.part`` gets its final name (0400) only
    when size and hash equal the expected ones and the service's ``X-Memdump-SHA256``. Returns a dict
    (sha256, size_bytes, resumes, seconds, bytes_received). Memory use is one chunk.
    """
    part = dest + '.part'
    digest = hashlib.sha256()
    offset = 0
    if os.path.lexists(part):  # a leftover of a cut run: hash what is there and go on from its end
        if os.path.islink(part) or not os.path.isfile(part):
            raise DownloadError('%s exists and is not a regular file: refused (remove it)' % part)
        os.chmod(part, PART_MODE)  # an earlier run may have failed after making it read-only
        with open(part, 'rb') as f:
            for chunk in iter(lambda: f.read(CHUNK), b''):
                digest.update(chunk)
                offset += len(chunk)
        if offset > expected_size:
            os.unlink(part)
            digest, offset = hashlib.sha256(), 0
    started = time.monotonic()
    resumes = 0
    received = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, PART_MODE)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        os.ftruncate(fd, offset)
        sink = _Writer(fd, digest)
        try:
            while offset < expected_size:
                try:
                    resp = open_file(offset)
                except ConnectionErrorTypes as e:  # retried below
                    resp, err = None, e
                else:
                    err = None
                if resp is not None:
                    try:
                        offset, got, err = _receive(resp, sink, offset, expected_size, expected_sha256)
                        received += got
                    finally:
                        resp.close()
                if err is None:
                    break
                if resumes >= retries:
                    raise DownloadError('the download was cut at byte %d of %d and %d resumes did not finish it: %s'
                                        % (offset, expected_size, retries, err))
                resumes += 1
                sleep(retry_delay)
        finally:
            sink.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    if offset != expected_size:
        raise DownloadError('received %d bytes, the service announced %d' % (offset, expected_size))
    got_sha = digest.hexdigest()
    if got_sha != expected_sha256:
        os.unlink(part)
        raise DownloadError('SHA-256 of the received image is %s, the service recorded %s: the image was '
                            'changed in transit or on the host; nothing was kept' % (got_sha, expected_sha256))
    final_name(part, dest)
    return {'sha256': got_sha, 'size_bytes': offset, 'resumes': resumes, 'bytes_received': received,
            'seconds': round(time.monotonic() - started, 3)}


# A file system that has no hard links answers one of these to link().
NO_LINKS = frozenset(getattr(errno, name) for name in
                     ('EPERM', 'EOPNOTSUPP', 'ENOTSUP', 'EMLINK', 'EXDEV', 'ENOSYS', 'EACCES') if hasattr(errno, name))


def final_name(part, dest):
    """Gives the verified ``part`` its final name ``dest`` (0400), never replacing an existing file.

    ``link()`` fails if dest exists; where the file system has no hard links, dest is checked and
    ``part`` renamed (the caller holds the image's lock, so no run of ours writes dest in between).
    On any failure ``part`` stays writable, so the next run can finish it."""
    os.chmod(part, IMAGE_MODE)
    try:
        try:
            os.link(part, dest)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise DownloadError('%s appeared during the download; it is never overwritten' % dest)
            if e.errno not in NO_LINKS:
                raise
            if os.path.lexists(dest):
                raise DownloadError('%s appeared during the download; it is never overwritten' % dest)
            os.rename(part, dest)
            return
    except BaseException:
        if os.path.exists(part):
            os.chmod(part, PART_MODE)
        raise
    try:
        os.unlink(part)
    except OSError:
        pass  # dest is complete; a leftover link to it is reported by verify and reused by no one


class _Cut(Exception):
    pass


ConnectionErrorTypes = (MemdumpConnectionError, _Cut, OSError)


def _header(resp, name):
    headers = getattr(resp, 'headers', None)
    if headers is None and hasattr(resp, 'info'):
        headers = resp.info()
    return headers.get(name) if headers is not None else None


class _Writer(object):
    """Hashes and writes received chunks in a thread of its own, in order, so that receiving the next
    chunk overlaps hashing, writing and syncing this one (hashlib and os.write release the GIL)."""

    def __init__(self, fd, digest):
        self.fd = fd
        self.digest = digest
        self.error = None
        self._free = [bytearray(CHUNK) for dummy in range(PIPELINE_CHUNKS)]
        self._queue = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name='memdump-collect-writer', daemon=True)
        self._thread.start()

    def free_buffer(self):
        with self._cond:
            while not self._free and self.error is None:
                self._cond.wait()
            self._raise()
            return self._free.pop()

    def give_back(self, buf):
        with self._cond:
            self._free.append(buf)
            self._cond.notify_all()

    def put(self, buf, n):
        with self._cond:
            self._raise()
            self._queue.append((buf, n))
            self._cond.notify_all()

    def close(self):
        """Waits until every queued chunk is written; raises the writer's error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def _raise(self):
        if self.error is not None:
            raise DownloadError('writing the image failed: %s' % self.error)

    def _run(self):
        unsynced = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                buf, n = self._queue.pop(0)
            try:
                view = memoryview(buf)[:n]
                self.digest.update(view)
                while view:
                    view = view[os.write(self.fd, view):]
                unsynced += n
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(self.fd)
                    unsynced = 0
            except OSError as e:
                with self._cond:
                    self.error = e
                    self._cond.notify_all()
                return
            self.give_back(buf)


def _receive(resp, sink, offset, expected_size, expected_sha256):
    """Reads one response into fd; returns (new offset, bytes got, None or the error to resume after)."""
    status = resp.getcode() if hasattr(resp, 'getcode') else resp.status
    if offset and status != 206:
        raise DownloadError('the service answered HTTP %s to a Range request from byte %d (expected 206)' % (status, offset))
    if not offset and status not in (200, 206):
        raise DownloadError('the service answered HTTP %s for the file' % status)
    if offset:
        crange = _header(resp, 'Content-Range') or ''
        m = re.match(r'^bytes (\d+)-(\d+)/(\d+|\*)$', crange.strip())
        if not m or int(m.group(1)) != offset:
            raise DownloadError('the service answered Content-Range %r to a request from byte %d' % (crange, offset))
        if m.group(3) != '*' and int(m.group(3)) != expected_size:
            raise DownloadError('the service announces %s bytes in Content-Range, its record says %d'
                                % (m.group(3), expected_size))
    header_sha = (_header(resp, 'X-Memdump-SHA256') or '').strip().lower()
    if header_sha and header_sha != expected_sha256:
        raise DownloadError('the service sends X-Memdump-SHA256 %s, its record says %s' % (header_sha, expected_sha256))
    length = _header(resp, 'Content-Length')
    if length is not None and length.strip().isdigit() and offset + int(length) != expected_size:
        raise DownloadError('the service announces %s bytes from byte %d (Content-Length), its record says %d in all'
                            % (length.strip(), offset, expected_size))
    got = 0
    try:
        while True:
            buf = sink.free_buffer()
            n = resp.readinto(buf)
            if not n:
                sink.give_back(buf)
                break
            if offset + n > expected_size:
                sink.give_back(buf)
                raise DownloadError('the service sent more than the %d bytes it announced; nothing was kept'
                                    % expected_size)
            sink.put(buf, n)
            offset += n
            got += n
    except DownloadError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # a cut connection (IncompleteRead, reset, timeout)
        return offset, got, e
    if offset < expected_size:
        return offset, got, _Cut('the connection ended at byte %d of %d' % (offset, expected_size))
    return offset, got, None
