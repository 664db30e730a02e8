# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File access for image drivers: positioned I/O, allocation extents and
QEMU-compatible image locks.

Locks (docs/security.md rule 8) follow QEMU's block/file-posix.c: one
open-file-description (OFD) read lock on byte ``100 + bit`` for every
permission held, and on byte ``200 + bit`` for every permission *not shared*
with other users.  A conflict exists when another open file description holds
a lock on ``200 + bit`` for a permission we want, or on ``100 + bit`` for a
permission we do not share; it is found with F_OFD_GETLK testing for a write
lock on that byte (locks of our own description never conflict).

Permission bits are those of QEMU >= 7.0 (graph-mod was dropped there).  The
sets below are what ``qemu-img`` takes on a qcow2 image (observed with strace
on qemu-img 7.2): read-only ``info``/``check``/``map`` hold consistent-read and
do not share write or resize; ``resize``/``commit`` hold consistent-read,
write and resize and share only consistent-read and write-unchanged;
``-U`` (force share) holds consistent-read and shares everything.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import fcntl
import os
import stat
import struct

try:
    import ctypes
except ImportError:  # pragma: no cover - ctypes is missing only on exotic builds
    ctypes = None

from .errors import (FormatError, ImageError, ImageInUseError, ImageNotFoundError, NoSpaceError,
                     InvalidOptionError, ReadOnlyImageError, UnsupportedOperation)

# --- QEMU lock layout (block/file-posix.c, include/block/block-common.h) --------
LOCK_PERM_BASE = 100      # byte LOCK_PERM_BASE + bit: permission held
LOCK_SHARED_BASE = 200    # byte LOCK_SHARED_BASE + bit: permission not shared

PERM_CONSISTENT_READ = 1 << 0
PERM_WRITE = 1 << 1
PERM_WRITE_UNCHANGED = 1 << 2
PERM_RESIZE = 1 << 3
PERM_ALL = PERM_CONSISTENT_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE

PERM_NAMES = {
    PERM_CONSISTENT_READ: "consistent read",
    PERM_WRITE: "write",
    PERM_WRITE_UNCHANGED: "write unchanged",
    PERM_RESIZE: "resize",
}

# (held, shared) permission sets, as qemu-img takes them on a qcow2 image.
READONLY_PERMS = (PERM_CONSISTENT_READ, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
READONLY_SHARED_PERMS = (PERM_CONSISTENT_READ, PERM_ALL)
WRITABLE_PERMS = (PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
                  PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)

# --- fcntl(2) open-file-description locks (Linux values when fcntl lacks them) --
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (native layout and alignment).
FLOCK = struct.Struct("@hhqqi")
FLOCK_BUFFER_SIZE = (FLOCK.size + 7) // 8 * 8

# --- fallocate(2) modes (linux/falloc.h) ---------------------------------------
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# Chunk for zero-filling fallbacks (same bound as formats.base.MAX_IO).
ZERO_CHUNK = 4 * 1024 * 1024

# At most this many overwritten bytes are kept for undo() (metadata of a grow takes far less;
# a block device, whose every byte lies inside its size, could take far more).
UNDO_LIMIT = 64 * 1024 * 1024

# --- block device ioctls (linux/fs.h) ------------------------------------------
# BLKZEROOUT = _IO(0x12, 127): make uint64_t range[2] = {start, length} read zero.
BLKZEROOUT = 0x127F
ZEROOUT_RANGE = struct.Struct("=QQ")
# BLKSSZGET = _IO(0x12, 104): logical sector size (int).
BLKSSZGET = 0x1268
SECTOR_SIZE_VALUE = struct.Struct("=i")
# BLKZEROOUT ranges are aligned to this (or the logical sector size when larger),
# whole pages, so the kernel's page cache invalidation never splits a page.
ZEROOUT_ALIGN = 4096
# errno of a BLKZEROOUT the device (or kernel) does not offer: zeroes are written instead.
_ZEROOUT_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS)

# Errors that mean "this file system cannot lock" rather than "someone holds a lock".
_LOCK_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOLCK, errno.ENOSYS)


def _flock(lock_type, start, length=1):
    packed = FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0)
    return packed + b"\0" * (FLOCK_BUFFER_SIZE - len(packed))


def _perm_bits(mask):
    return [bit for bit in sorted(PERM_NAMES) if mask & bit]


def _bit_index(bit):
    return bit.bit_length() - 1


_fallocate_function = None

# The largest offset a file can have (off_t): header fields of hostile images may point past it.
MAX_FILE_OFFSET = (1 << 63) - 1


_libc = None


def libc_library():
    """The C library through ctypes, loaded once: the symbols the process has
    already loaded (libc among them), else the library ctypes.util finds (slow:
    it imports subprocess and runs ldconfig, so only when the first way fails)."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            getattr(libc, "fsync")
        except (OSError, AttributeError, TypeError):
            from ctypes import util as ctypes_util  # pylint: disable=import-outside-toplevel
            libc = ctypes.CDLL(ctypes_util.find_library("c") or "libc.so.6", use_errno=True)
        _libc = libc
    return _libc


def _fallocate():
    """libc fallocate() through ctypes, or None when unavailable."""
    global _fallocate_function
    if _fallocate_function is None:
        function = False
        if ctypes is not None:
            try:
                libc = libc_library()
                function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate")
                function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
                function.restype = ctypes.c_int
            except (OSError, AttributeError):
                function = False
        _fallocate_function = function
    return _fallocate_function or None


class ImageFile:
    """One image file (or block device) opened for positioned I/O, holding
    QEMU-compatible locks while open.

    ``writable`` opens read-write; ``create`` creates the file (O_EXCL, implies
    writable); ``lock=False`` takes no locks at all; ``force_share`` (read-only
    only) shares every permission, like ``qemu-img -U``.
    """

    def __new__(cls, path, *args, **kwargs):
        # A path naming a member of an archive (ova.MemberPath) opens as its own
        # read-only ImageFile subclass, so drivers read members unchanged.
        file_class = getattr(path, "image_file_class", None)
        if isinstance(file_class, type) and issubclass(file_class, cls):
            return object.__new__(file_class)
        return object.__new__(cls)

    def __init__(self, path, writable=False, create=False, lock=True, force_share=False):
        self.path = os.path.abspath(os.fspath(path))
        self.writable = bool(writable or create)
        self.fd = None
        self.is_block_device = False
        # Block devices: None until a zeroing was needed, then whether BLKZEROOUT served it.
        self.zeroout = None
        self._zeroout_align = None
        self._locks_held = False
        # While a change may have to be taken back (start_undo): the size and overwritten bytes.
        self._undo = None
        if force_share and self.writable:
            raise InvalidOptionError("force_share can only be used with read-only images", self.path)

        flags = os.O_RDWR if self.writable else os.O_RDONLY
        # O_NONBLOCK until the type is known: opening a FIFO must not hang.
        flags |= getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise self._open_error(exc, create)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise ImageError("is a directory, not an image file", self.path)
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if not (stat.S_ISREG(st.st_mode) or self.is_block_device):
                raise ImageError("is neither a regular file nor a block device (mode 0o%o)"
                                 % stat.S_IFMT(st.st_mode), self.path)
            os.set_blocking(self.fd, True)
            if lock:
                if force_share:
                    perm, shared = READONLY_SHARED_PERMS
                elif self.writable:
                    perm, shared = WRITABLE_PERMS
                else:
                    perm, shared = READONLY_PERMS
                self._lock(perm, shared)
        except BaseException:
            self.close()
            raise

    def _open_error(self, exc, create):
        if exc.errno == errno.ENOENT and create:
            return ImageError("cannot create the image: %s (does its directory exist?)"
                              % exc.strerror, self.path)
        if exc.errno == errno.ENOENT:
            return ImageNotFoundError("image file does not exist (%s)" % exc.strerror, self.path)
        if exc.errno == errno.EEXIST and create:
            return ImageError("cannot create the image: the file already exists", self.path)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self.writable:
            return ReadOnlyImageError("cannot open the image for writing: %s" % exc.strerror, self.path)
        return ImageError("cannot open the image: %s" % exc.strerror, self.path)

    # ------------------------------------------------------------------ locks
    def _lock(self, perm, shared):
        """Take the lock bytes, then test for conflicting holders (QEMU order:
        apply, then check, so two openers racing see each other)."""
        not_shared = PERM_ALL & ~shared
        try:
            for bit in _perm_bits(perm):
                self._set_lock(fcntl.F_RDLCK, LOCK_PERM_BASE + _bit_index(bit))
            for bit in _perm_bits(not_shared):
                self._set_lock(fcntl.F_RDLCK, LOCK_SHARED_BASE + _bit_index(bit))
        except OSError as exc:
            if exc.errno in _LOCK_UNSUPPORTED:
                # No OFD locks on this file system (QEMU's locking=auto falls back to off).
                self._unlock()
                return
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ImageInUseError("%s is in use by another process (QEMU lock on byte %d): "
                                      "another process holds an exclusive lock there"
                                      % (self.path, exc.lock_byte), self.path)
            raise ImageError("cannot lock the image: %s" % exc.strerror, self.path)
        self._locks_held = True
        # Someone not sharing a permission we want holds 200+bit ...
        for bit in _perm_bits(perm):
            byte = LOCK_SHARED_BASE + _bit_index(bit)
            if self._conflicts(byte):
                self._unlock()
                raise ImageInUseError(
                    "%s is in use by another process (QEMU lock on byte %d): it does not share "
                    "the \"%s\" permission this open needs (a running guest or another qemu-img?)"
                    % (self.path, byte, PERM_NAMES[bit]), self.path)
        # ... or someone holds a permission we do not share on 100+bit.
        for bit in _perm_bits(not_shared):
            byte = LOCK_PERM_BASE + _bit_index(bit)
            if self._conflicts(byte):
                self._unlock()
                raise ImageInUseError(
                    "%s is in use by another process (QEMU lock on byte %d): it holds the "
                    "\"%s\" permission, which this open does not share (a running guest or "
                    "another qemu-img?)" % (self.path, byte, PERM_NAMES[bit]), self.path,
                    read_only_look=not self.writable)

    def _set_lock(self, lock_type, byte):
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, _flock(lock_type, byte))
        except OSError as exc:
            exc.lock_byte = byte
            raise

    def _conflicts(self, byte):
        """Whether another open file description holds a lock on ``byte``."""
        result = fcntl.fcntl(self.fd, F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
        lock_type = FLOCK.unpack_from(result)[0]
        return lock_type != fcntl.F_UNLCK

    def _unlock(self):
        """Release every lock byte of this description (closing would too)."""
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, _flock(fcntl.F_UNLCK, LOCK_PERM_BASE,
                                                     LOCK_SHARED_BASE + 64 - LOCK_PERM_BASE))
        except OSError:
            pass
        self._locks_held = False

    # ---------------------------------------------------------------- queries
    @property
    def locked(self):
        """Whether this open holds QEMU's locks (False with lock=False, or on a file system without OFD locks)."""
        return self._locks_held

    def size(self):
        """File size in bytes (block devices: device size)."""
        if self.is_block_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def allocated_size(self):
        """Bytes allocated on the host (st_blocks * 512), as qemu-img's disk size."""
        return os.fstat(self.fd).st_blocks * 512

    # ------------------------------------------------------------------ reads
    def pread(self, offset, length):
        """Up to ``length`` bytes at ``offset``; short only at end of file (a read
        past the largest offset a file can have reads nothing, as past its end)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if offset >= MAX_FILE_OFFSET:
            return b""
        length = min(length, MAX_FILE_OFFSET - offset)
        chunk = os.pread(self.fd, length, offset)
        if len(chunk) == length or not chunk:
            return chunk
        parts = [chunk]
        done = len(chunk)
        while done < length:
            chunk = os.pread(self.fd, length - done, offset + done)
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def pread_exact(self, offset, length, what):
        """Exactly ``length`` bytes at ``offset``, or FormatError naming ``what``."""
        data = self.pread(offset, length)
        if len(data) != length:
            raise FormatError("%s at offset %d (%d bytes) lies beyond the end of the file "
                              "(file size %d, read %d bytes)"
                              % (what, offset, length, self.size(), len(data)), self.path)
        return data

    # ----------------------------------------------------------------- writes
    def _check_writable(self):
        if not self.writable:
            raise ReadOnlyImageError("image file is opened read-only", self.path)

    def pwrite(self, offset, data):
        """Write all of ``data`` at ``offset``."""
        self._check_writable()
        if offset < 0:
            raise ValueError("negative offset")
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        done = 0
        total = len(view)
        self._save_for_undo(offset, total)
        while done < total:
            try:
                written = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise _write_error(exc, "cannot write %d bytes at offset %d" % (total - done, offset + done),
                                   self.path)
            if written <= 0:
                raise ImageError("short write at offset %d" % (offset + done), self.path)
            done += written

    def pwrite_parts(self, offset, parts):
        """Write the buffers of ``parts`` one after another at ``offset`` with
        os.pwritev (at most IOV_MAX per call, short writes continued)."""
        self._check_writable()
        if offset < 0:
            raise ValueError("negative offset")
        views = []
        for part in parts:
            view = memoryview(part)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            if len(view):
                views.append(view)
        total = sum(len(view) for view in views)
        self._save_for_undo(offset, total)
        limit = _iov_max()
        done = 0
        first = 0
        while first < len(views):
            batch = views[first:first + limit]
            try:
                written = os.pwritev(self.fd, batch, offset + done)
            except OSError as exc:
                raise _write_error(exc, "cannot write %d bytes at offset %d" % (total - done, offset + done),
                                   self.path)
            if written <= 0:
                raise ImageError("short write at offset %d" % (offset + done), self.path)
            done += written
            # skip the buffers written whole; a partly written one continues from where it stopped
            while first < len(views) and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]

    # ------------------------------------------------------------------ undo
    def start_undo(self):
        """Record from now on what each change overwrites, so that undo() can put
        the file back as it is now (a grow that fails half-way, out of space)."""
        self._undo = {"size": self.size(), "saved": [], "kept": 0, "complete": True}

    def stop_undo(self):
        """Keep the changes made since start_undo() and forget what they overwrote."""
        self._undo = None

    def _save_for_undo(self, offset, length):
        undo = getattr(self, "_undo", None)
        if undo is None or length <= 0:
            return
        end = min(offset + length, undo["size"])
        if offset >= end or not undo["complete"]:
            return  # only bytes inside the old end matter: undo() cuts the file back to it
        if undo["kept"] + end - offset > UNDO_LIMIT:
            undo["saved"] = []
            undo["complete"] = False
            return
        undo["saved"].append((offset, self.pread(offset, end - offset)))
        undo["kept"] += end - offset

    def undo(self):
        """Put the file back as it was at start_undo(): its length, then the bytes
        overwritten since (newest first, so the oldest contents win)."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        if not undo["complete"]:
            raise ImageError("cannot undo the change: it overwrote more than %d bytes of the image, more than "
                             "is kept to put them back" % UNDO_LIMIT, self.path)
        if not self.is_block_device and self.size() != undo["size"]:
            # first, so that the space the change took is free for the restoring writes
            os.ftruncate(self.fd, undo["size"])
        for offset, data in reversed(undo["saved"]):
            self.pwrite(offset, data)
        self.flush()

    def truncate(self, size):
        self._check_writable()
        if self.is_block_device:
            if size == self.size():
                return
            raise UnsupportedOperation("cannot change the size of a block device (size %d, "
                                       "requested %d)" % (self.size(), size), self.path)
        current = self.size()
        if size < current:
            self._save_for_undo(size, current - size)
        os.ftruncate(self.fd, size)

    def allocate(self, offset, length):
        """Allocate host blocks for the range (posix_fallocate; extends the file)."""
        self._check_writable()
        if length <= 0:
            return
        try:
            os.posix_fallocate(self.fd, offset, length)
        except OSError as exc:
            raise _write_error(exc, "cannot allocate %d bytes at offset %d" % (length, offset), self.path)

    def write_zeroes(self, offset, length):
        """Make the range read zeroes: explicit zeroes in bounded chunks; on a
        block device the aligned middle goes to BLKZEROOUT (the device zeroes
        it, thin or SSD devices without writing), with zeroes written where
        the device refuses it."""
        self._check_writable()
        if length <= 0:
            return
        if self.is_block_device and self.zeroout is not False:
            align = self._zeroout_alignment()
            end = offset + length
            inner_start = min(-(-offset // align) * align, end)
            inner_end = max(end // align * align, inner_start)
            if inner_end > inner_start:
                self._save_for_undo(inner_start, inner_end - inner_start)
            if inner_end > inner_start and self._zero_out(inner_start, inner_end - inner_start):
                self._write_zero_bytes(offset, inner_start - offset)
                self._write_zero_bytes(inner_end, end - inner_end)
                return
        self._write_zero_bytes(offset, length)

    def _zeroout_alignment(self):
        if self._zeroout_align is None:
            try:
                result = fcntl.ioctl(self.fd, BLKSSZGET, bytes(SECTOR_SIZE_VALUE.size))
                sector = SECTOR_SIZE_VALUE.unpack(result)[0]
            except OSError:
                sector = 0
            self._zeroout_align = max(ZEROOUT_ALIGN, sector if sector > 0 else 0)
        return self._zeroout_align

    def _zero_out(self, offset, length):
        """BLKZEROOUT of an aligned range; False (and never tried again) when
        the device does not offer it."""
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, ZEROOUT_RANGE.pack(offset, length))
        except OSError as exc:
            if exc.errno in _ZEROOUT_UNSUPPORTED:
                self.zeroout = False
                return False
            raise ImageError("cannot zero %d bytes at offset %d of the block device (BLKZEROOUT): %s"
                             % (length, offset, exc.strerror), self.path)
        self.zeroout = True
        return True

    def _write_zero_bytes(self, offset, length):
        if length <= 0:
            return
        zeroes = bytes(min(length, ZERO_CHUNK))
        end = offset + length
        while offset < end:
            count = min(end - offset, len(zeroes))
            self.pwrite(offset, zeroes if count == len(zeroes) else memoryview(zeroes)[:count])
            offset += count

    def punch_hole(self, offset, length):
        """Deallocate the range so that it reads zeroes, keeping the file size;
        writes zeroes where the file system cannot punch holes.  On a block
        device the kernel discards with a zeroing guarantee, or refuses and
        write_zeroes (BLKZEROOUT) does it.  Returns True when a hole was punched."""
        self._check_writable()
        if length <= 0:
            return True
        size = self.size()
        # Never extend the file (KEEP_SIZE punches only inside it).
        if offset >= size:
            return True
        length = min(length, size - offset)
        function = _fallocate()
        if function is not None:
            self._save_for_undo(offset, length)
            result = function(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            if result == 0:
                return True
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.EPERM):
                raise ImageError("cannot punch a hole of %d bytes at offset %d: %s"
                                 % (length, offset, os.strerror(err)), self.path)
        self.write_zeroes(offset, length)
        return False

    def flush(self):
        """Make written data durable (fdatasync)."""
        if self.fd is not None and self.writable:
            os.fdatasync(self.fd)

    # ---------------------------------------------------------------- extents
    def data_extents(self, offset, length):
        """[(start, length, is_data)] covering [offset, offset+length) exactly,
        from SEEK_DATA/SEEK_HOLE; the whole range as data when unsupported.
        Bytes past the end of the file are reported as a hole."""
        if length <= 0:
            return []
        end = offset + length
        seek_data = getattr(os, "SEEK_DATA", None)
        seek_hole = getattr(os, "SEEK_HOLE", None)
        if seek_data is None or self.is_block_device:
            return [(offset, length, True)]
        extents = []
        position = offset
        while position < end:
            try:
                data_start = os.lseek(self.fd, position, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    # No data at or after position (or position is past EOF).
                    data_start = end
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and not extents:
                    return [(offset, length, True)]
                else:
                    raise ImageError("cannot query allocation at offset %d: %s"
                                     % (position, exc.strerror), self.path)
            data_start = min(data_start, end)
            if data_start > position:
                extents.append((position, data_start - position, False))
                position = data_start
                if position >= end:
                    break
            try:
                hole_start = os.lseek(self.fd, position, seek_hole)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    # Raced with truncation: treat the rest as a hole.
                    extents.append((position, end - position, False))
                    break
                raise ImageError("cannot query allocation at offset %d: %s"
                                 % (position, exc.strerror), self.path)
            hole_start = min(hole_start, end)
            if hole_start <= position:
                # Should not happen; never loop forever.
                hole_start = end
            extents.append((position, hole_start - position, True))
            position = hole_start
        return _merge(extents)

    # -------------------------------------------------------------- lifecycle
    def close(self):
        fd = self.fd
        if fd is None:
            return
        self.fd = None
        self._locks_held = False
        # Closing the last descriptor of the description drops its OFD locks.
        os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return "<ImageFile %s %s>" % (self.path, "rw" if self.writable else "ro")


def no_space_reason(error_number):
    """ENOSPC or EDQUOT in words."""
    if error_number == errno.EDQUOT:
        return "no space left: the disk quota of the file system holding the image is used up"
    return "no space left on the device (file system) holding the image"


def _write_error(exc, action, path):
    """The ImageError for an OSError met while ``action``: NoSpaceError, in words, when the
    file system (or device) is full or the quota is reached."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError("%s: %s" % (action, no_space_reason(exc.errno)), path)
    return ImageError("%s: %s" % (action, exc.strerror or exc), path)


def _merge(extents):
    merged = []
    for start, length, is_data in extents:
        if length <= 0:
            continue
        if merged and merged[-1][2] == is_data and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, is_data)
        else:
            merged.append((start, length, is_data))
    return merged


def pread_into(image_file, offset, view):
    """Fill the writable memoryview ``view`` with the bytes of ``image_file`` at
    ``offset``; returns how many were read (fewer only at the end of the file).

    A plain ImageFile reads straight into ``view`` (os.preadv: no intermediate
    bytes object and no copy in Python, which costs more than the read itself
    for megabytes); other file objects (a window on an archive member) go
    through their ``pread``."""
    length = len(view)
    if type(image_file).pread is ImageFile.pread and getattr(image_file, "fd", None) is not None \
            and hasattr(os, "preadv"):
        if offset < 0:
            raise ValueError("negative offset")
        if offset >= MAX_FILE_OFFSET:
            return 0
        length = min(length, MAX_FILE_OFFSET - offset)
        done = 0
        while done < length:
            count = os.preadv(image_file.fd, [view[done:length]], offset + done)
            if count <= 0:
                break
            done += count
        return done
    data = image_file.pread(offset, length)
    view[:len(data)] = data
    return len(data)


def _iov_max():
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        value = -1
    return value if value > 0 else 1024


def pwrite_from(image_file, offset, parts):
    """Write the buffers of ``parts`` (bytes-like, one byte per item) one after
    another at ``offset`` of ``image_file``, as ``pwrite(offset, b"".join(parts))``.

    A plain ImageFile writes them with os.pwritev, straight from the caller's
    buffers (no joined copy in Python, which costs more than the write itself
    for megabytes); other file objects get one joined write."""
    if len(parts) == 1:
        image_file.pwrite(offset, parts[0])
        return
    if not (type(image_file).pwrite is ImageFile.pwrite and getattr(image_file, "fd", None) is not None
            and hasattr(os, "pwritev")):
        image_file.pwrite(offset, b"".join(parts))
        return
    image_file.pwrite_parts(offset, parts)
