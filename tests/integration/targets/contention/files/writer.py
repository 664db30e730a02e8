# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The process writing an image, seen from outside (contention target).

``writer.py wait IMAGE [SECONDS]``: wait until a process holds IMAGE's "write" permission (QEMU's OFD lock on byte
101, block/file-posix.c), read from /proc/locks without taking a lock, so that waiting never disturbs the holder.

``writer.py stop IMAGE PIDFILE``: wait so, stop (SIGSTOP) every other process that has IMAGE open, write their IDs to
PIDFILE (for a later SIGCONT) and make sure the write lock is still held: another task then overlaps with the writer
on any machine, however fast the writer is.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import signal
import sys
import time

WRITE_BYTE = 101


def write_locked(inode):
    """Whether an OFD lock covers byte 101 of the file with ``inode``."""
    with open('/proc/locks') as locks:
        for line in locks:
            fields = line.split()
            if len(fields) < 8 or fields[1] != 'OFDLCK' or fields[5].rsplit(':', 1)[-1] != str(inode):
                continue
            if int(fields[6]) <= WRITE_BYTE and (fields[7] == 'EOF' or int(fields[7]) >= WRITE_BYTE):
                return True
    return False


def wait(image, seconds):
    inode = os.stat(image).st_ino
    deadline = time.time() + seconds
    while not write_locked(inode):
        if time.time() > deadline:
            sys.exit('no process took the write lock of %s in %s s' % (image, seconds))
        time.sleep(0.01)
    return inode


def openers(image):
    real = os.path.realpath(image)
    found = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            for fd in os.listdir('/proc/%s/fd' % pid):
                if os.readlink('/proc/%s/fd/%s' % (pid, fd)) == real:
                    found.add(int(pid))
                    break
        except OSError:
            continue
    return sorted(found)


def stop(image, pidfile):
    inode = wait(image, 60)
    pids = openers(image)
    if not pids:
        sys.exit('no process has %s open any more: the writer finished before it could be stopped' % image)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    with open(pidfile, 'w') as stream:
        stream.write(' '.join(str(pid) for pid in pids))
    if not write_locked(inode):
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        sys.exit('the writer released %s before it was stopped' % image)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == 'wait':
        wait(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 60)
    elif len(sys.argv) == 4 and sys.argv[1] == 'stop':
        stop(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
