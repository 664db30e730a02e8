# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path policy for files named inside images (docs/security.md rule 1).

An image is hostile input: the backing file, data file or extent names it
records must not make us open arbitrary host files (``/etc/shadow`` as a
backing file would leak it into the guest view; ``nbd:`` or ``json:`` names
would reach the network).  Decisions are made from the name and ``stat`` only;
the named path is never opened here.

The rules:

* the name must be non-empty text without NUL bytes;
* no protocol prefix: a ``:`` before the first ``/`` (QEMU reads ``json:``,
  ``nbd:``, ``http:``, ``file:`` ... there), so ``./a:b`` is a file name but
  ``a:b`` is refused;
* relative names resolve against the referrer's directory as the referrer was
  named (QEMU does the same);
* the default policy accepts a name, relative or absolute, whose real path
  (symbolic links resolved) lies in the referrer's own directory or below it:
  libvirt records the backing file of an external snapshot as an absolute name
  in the same directory.  Absolute names anywhere else are refused, unless
  inside one of ``allow_dirs``;
* ``..`` components (in relative and absolute names) are refused by the
  default policy.  When the caller gives ``allow_dirs``, a name with ``..`` is
  accepted if it resolves inside the referrer's directory or one of
  ``allow_dirs`` (the usual ``../base/base.qcow2`` layout, with
  ``allow_dirs=[".../base"]``);
* after resolving symbolic links (realpath) the file must lie inside the
  referrer's directory or one of ``allow_dirs``: a symbolic link in the
  directory that leads out of it is refused;
* ``trusted_files``: files the caller itself names (an Ansible task's
  ``path``, ``src``, ``backing_file``: the operator's word, not the image's).
  A name whose real path is the real path of one of them is accepted
  wherever it lies, ``..`` and symbolic links included; only those exact
  files, nothing beside them.  The other rules (text, no protocol prefix,
  regular file) still apply;
* the target must be a regular file (``stat``): device nodes, FIFOs, sockets
  and directories are refused whatever the directory;
* a target that does not exist raises ImageNotFoundError.

Nothing else is accepted: compared with earlier versions, only absolute names
in the referrer's own directory and the caller's trusted files are newly
accepted by default.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import stat

from .errors import ImageNotFoundError, PolicyError

# Names read as OVA or Vagrant box archives (ova.locate looks inside them without a member selector).
ARCHIVE_SUFFIXES = (".ova", ".box")


def _is_inside(path, directory):
    """Whether real path ``path`` is ``directory`` or below it (both real paths)."""
    if directory == os.sep:
        return path.startswith(os.sep)
    return path == directory or path.startswith(directory + os.sep)


def _real_dirs(dirs):
    if isinstance(dirs, (str, bytes)) or hasattr(dirs, "__fspath__"):
        dirs = [dirs]  # one directory given bare: never iterate over its characters
    return [os.path.realpath(os.path.abspath(os.fsdecode(d))) for d in (dirs or ())]


def _real_files(files):
    """Real paths of the caller's trusted files (one file may be given bare)."""
    if isinstance(files, (str, bytes)) or hasattr(files, "__fspath__"):
        files = [files]
    return set(os.path.realpath(os.path.abspath(os.fsdecode(f))) for f in (files or ()))


def has_protocol(name):
    """QEMU's rule: a ``:`` before any ``/`` makes the name ``protocol:rest``."""
    colon = name.find(":")
    if colon < 0:
        return False
    slash = name.find("/")
    return slash < 0 or colon < slash


def referrer_dir(referrer_path):
    """Directory relative names are resolved against (the referrer as named, like QEMU)."""
    return os.path.dirname(os.path.abspath(os.fspath(referrer_path)))


def search_dirs(referrer_path, allow_dirs=None):
    """Directories whose image files may be looked up by UUID for a parent
    (VirtualBox differencing images): the referrer's own directory, the one
    above it when the referrer sits in a ``Snapshots`` folder, then ``allow_dirs``."""
    if getattr(referrer_path, "resolve_sibling", None) is not None:
        return []  # an archive member (ova.MemberPath): nothing on disk is searched
    own = referrer_dir(referrer_path)
    dirs = [own]
    if os.path.basename(own) == "Snapshots":
        dirs.append(os.path.dirname(own))
    for directory in _real_dirs(allow_dirs):
        if directory not in dirs:
            dirs.append(directory)
    return dirs


def resolve_reference(referrer_path, name, allow_dirs=None, kind="backing file", trusted_files=None):
    """Absolute real path of file ``name`` recorded in image ``referrer_path``,
    or PolicyError saying why it may not be opened.  ImageNotFoundError when it
    is allowed but missing.  ``trusted_files``: files the caller names itself
    (accepted wherever they are, see the module docstring)."""
    resolve_sibling = getattr(referrer_path, "resolve_sibling", None)
    if resolve_sibling is not None:
        # An archive member (ova.MemberPath): names resolve to members of the same archive only.
        return resolve_sibling(name, kind)
    referrer = os.path.abspath(os.fspath(referrer_path))

    def refuse(reason):
        return PolicyError("%s %r named in %s is refused: %s" % (kind, name, referrer, reason),
                           referrer)

    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not isinstance(name, str):
        raise refuse("the name is not text")
    if not name:
        raise refuse("the name is empty")
    if "\0" in name:
        raise refuse("the name contains a NUL byte")
    if name.startswith("json:"):
        raise refuse("json: descriptions are not allowed")
    if has_protocol(name):
        raise refuse("protocol prefix %r is not allowed (only plain file names are)"
                     % (name[:name.find(":") + 1]))

    own_dir = referrer_dir(referrer)
    allowed = _real_dirs(allow_dirs)
    real_own_dir = os.path.realpath(own_dir)
    # The referrer's own directory is always allowed, for relative and absolute names.
    permitted = [real_own_dir] + [d for d in allowed if d != real_own_dir]
    candidate = name if os.path.isabs(name) else os.path.join(own_dir, name)
    # No lexical normalisation first: like the kernel, '..' applies after the
    # symbolic links before it are followed (realpath does the same; it reads
    # links, it opens nothing).
    real = os.path.realpath(candidate)
    if real not in _real_files(trusted_files):
        if ".." in name.split("/") and not allowed:
            raise refuse("'..' components are not allowed (pass allow_dirs to permit a directory)")
        if not any(_is_inside(real, directory) for directory in permitted):
            where = ", ".join(permitted)
            if os.path.isabs(name) and not allowed:
                raise refuse("absolute paths are not allowed outside the image's directory %s (it resolves "
                             "to %s; pass allow_dirs to permit a directory)" % (real_own_dir, real))
            if real != os.path.normpath(candidate):
                raise refuse("it resolves to %s, outside the allowed directories (%s)" % (real, where))
            raise refuse("it is outside the allowed directories (%s)" % where)

    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ImageNotFoundError("%s %r named in %s does not exist (looked for %s)"
                                 % (kind, name, referrer, real), referrer)
    except OSError as exc:
        raise refuse("cannot stat %s: %s" % (real, exc.strerror))
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
            what = "a device node"
        elif stat.S_ISDIR(st.st_mode):
            what = "a directory"
        else:
            what = "not a regular file"
        raise refuse("%s is %s" % (real, what))
    return real


# ------------------------------------------------ parents known only by UUID
# Directory entries looked at per search (a hostile directory cannot make a lookup unbounded).
MAX_UUID_CANDIDATES = 4096


def _regular_inside(path, dirs):
    """Real path of ``path`` when it is a regular file inside one of ``dirs``
    (real paths), else None.  Decided from ``stat`` only: nothing is opened."""
    real = os.path.realpath(path)
    if not any(_is_inside(real, directory) for directory in _real_dirs(dirs)):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    return real if stat.S_ISREG(st.st_mode) else None


def image_candidates(dirs, suffixes, exclude=None, limit=MAX_UUID_CANDIDATES):
    """Real paths of the regular files named ``*<suffix>`` (case-insensitive)
    directly in ``dirs`` (the list ``search_dirs`` returns), in directory order,
    without ``exclude`` (a real path), device nodes, FIFOs or symbolic links
    leading out of ``dirs``.  Looks at ``limit`` entries at most."""
    suffixes = tuple(s.lower() for s in suffixes)
    found = []
    seen = 0
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            seen += 1
            if seen > limit:
                return found
            if not name.lower().endswith(suffixes):
                continue
            real = _regular_inside(os.path.join(directory, name), dirs)
            if real is not None and real != exclude and real not in found:
                found.append(real)
    return found


def read_candidate_header(path, dirs, length):
    """The first ``length`` bytes of candidate ``path`` (from image_candidates),
    read only when it is still a regular file inside ``dirs``: the file is
    opened without following a final symbolic link and without blocking, and
    checked again with fstat before reading.  PolicyError otherwise."""
    real = _regular_inside(path, dirs)
    if real is None:
        raise PolicyError("candidate image %s is refused: not a regular file inside %s"
                          % (path, ", ".join(_real_dirs(dirs))), path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PolicyError("candidate image %s is refused: not a regular file" % real, real)
        return os.pread(fd, length, 0)
    finally:
        os.close(fd)


def resolve_found(referrer_path, path, dirs, kind="parent image"):
    """Real path of ``path`` found by a UUID search for image ``referrer_path``
    in ``dirs`` (search_dirs), or PolicyError when it is not a regular file
    inside them (checked again right before the caller opens it)."""
    real = _regular_inside(path, dirs)
    if real is None:
        raise PolicyError("%s %s of %s is refused: not a regular file inside the searched "
                          "directories (%s)" % (kind, path, referrer_path, ", ".join(_real_dirs(dirs))),
                          os.path.abspath(os.fspath(referrer_path)))
    return real


def locator_file_name(windows_path):
    """A parent locator's Windows path as a name for the path policy:
    backslashes become slashes and a leading ``./`` is dropped."""
    name = windows_path.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name
