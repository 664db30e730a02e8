# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of lvm_volume_image and lvm_volume_image_info: guest images on LVM
logical volumes.

What a volume holds is recorded in LVM tags (TAG_* below): the image format,
the image's virtual size, the SHA-256 of the guest-visible content of the
source (what ``qemu-img convert -O raw SRC - | sha256sum`` prints) and a
fingerprint of the source files (device, inode, size, mtime and ctime of
every layer of its backing chain).  An unchanged fingerprint means an
unchanged source without reading it (ctime cannot be set back by users); a
changed fingerprint makes the module hash the source's content, and only a
different content counts as a changed source.

The write is the image library's convert onto the device in place
(on_device): sparse-aware, the source is walked by block status, zero runs
(holes, and zero blocks found in data) are made to read zero with BLKZEROOUT
(zeroes written where the device refuses it) unless the volume is known to read zero already
(a new thin volume in a pool that zeroes new blocks; the unallocated clusters
of a new qcow2 image).  Ranges past the image's end on a raw volume are zeroed
too: nothing of a volume's old content shows through.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import time

from ansible_collections.kvm.storage.plugins.module_utils._lvm import (
    Lvm,
    LvmError,
    check_lv_name,
    check_vg_name,
    round_up,
)
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageInUseError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA

# The image library's functions, each imported when first called (lvm_volume_image_info only reads info).
ConvertOptions = diskimage.deferred('ConvertOptions')
image_convert = diskimage.deferred('convert')
image_info = diskimage.deferred('info')
image_measure = diskimage.deferred('measure')
open_image = diskimage.deferred('open_image')
parse_size = diskimage.deferred('parse_size')

# Tags this module sets on a volume (lvm2 tag characters only).
TAG_PREFIX = "kvmstorage."
TAG_FORMAT = TAG_PREFIX + "format="
TAG_SIZE = TAG_PREFIX + "size="
TAG_SHA256 = TAG_PREFIX + "sha256="
TAG_SOURCE = TAG_PREFIX + "source="
# Set while a write is in progress: a volume carrying it holds a partial image.
TAG_WRITING = TAG_PREFIX + "writing"

FORMATS = ("raw", "qcow2")
MAX_IO = 4 * 1024 * 1024
# Guest bytes whose block status is asked for at once.
STATUS_WINDOW = 64 * MAX_IO
_ZEROES = bytes(MAX_IO)


class VolumeImageError(Exception):
    """A request the module refuses, or a step that failed (message says which).  ``result``: what the task
    did before it failed (changed, actions), returned with the failure."""

    def __init__(self, message, result=None):
        super(VolumeImageError, self).__init__(message)
        self.result = result or {}


def failure_text(exc):
    """An error's message for this module's user: the library's advice for an image in use names its own
    force_share, which lvm_volume_image does not have."""
    if isinstance(exc, ImageInUseError):
        # the running domains of qemu:///system holding the image or volume, where libvirt can tell
        from ansible_collections.kvm.storage.plugins.module_utils._libvirt import holders_text
        holders = holders_text(exc.path) if exc.path else ''
        return ("%s%s; lvm_volume_image does not open images in use: shut the guest down (or let the other process "
                "finish) and run the task again" % (exc.reason, holders))
    return str(exc)


# --------------------------------------------------------------------- tags
def encode_tags(fmt, virtual_size, sha256, fingerprint):
    """The tags of a volume holding a complete image."""
    return sorted([TAG_FORMAT + fmt, TAG_SIZE + str(int(virtual_size)), TAG_SHA256 + sha256, TAG_SOURCE + fingerprint])


def decode_tags(tags):
    """What a volume's tags say it holds: {ours, writing, complete, format, virtual_size, sha256, source}."""
    held = {"ours": False, "writing": False, "complete": False, "format": None, "virtual_size": None,
            "sha256": None, "source": None}
    for tag in tags:
        if not tag.startswith(TAG_PREFIX):
            continue
        held["ours"] = True
        if tag == TAG_WRITING:
            held["writing"] = True
        elif tag.startswith(TAG_FORMAT):
            held["format"] = tag[len(TAG_FORMAT):]
        elif tag.startswith(TAG_SIZE):
            try:
                held["virtual_size"] = int(tag[len(TAG_SIZE):])
            except ValueError:
                held["virtual_size"] = None
        elif tag.startswith(TAG_SHA256):
            held["sha256"] = tag[len(TAG_SHA256):]
        elif tag.startswith(TAG_SOURCE):
            held["source"] = tag[len(TAG_SOURCE):]
    held["complete"] = bool(held["ours"] and not held["writing"] and held["format"] in FORMATS
                            and held["virtual_size"] is not None and held["sha256"] and held["source"])
    return held


def own_tags(tags):
    return [tag for tag in tags if tag.startswith(TAG_PREFIX)]


# -------------------------------------------------------------------- sizes
def volume_size(fmt, virtual_size, qcow2_required, extent_size, requested=None):
    """(size of the volume in bytes, minimum it needs): the minimum is the
    virtual size (raw) or measure's ``required`` (qcow2); the size is
    ``requested`` or that minimum, rounded up to whole extents."""
    minimum = virtual_size if fmt == "raw" else qcow2_required
    if requested is not None and requested < minimum:
        raise VolumeImageError("size %d is too small: a %s volume holding this image needs at least %d bytes%s"
                               % (requested, fmt, minimum,
                                  " (qemu-img measure: required)" if fmt == "qcow2" else " (its virtual size)"))
    return round_up(requested if requested is not None else minimum, extent_size), minimum


def source_fingerprint(paths_and_stats):
    """Fingerprint of a source chain from [(path, os.stat_result)], top layer first."""
    digest = hashlib.sha256()
    for path, st in paths_and_stats:
        record = "%s\0%d\0%d\0%d\0%d\0%d\n" % (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest.update(record.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def chain_files(image):
    """[(path, stat)] of every layer of an opened image, top first."""
    layers = []
    driver = image.driver
    while driver is not None:
        path = os.path.realpath(driver.path)
        layers.append((path, os.stat(path)))
        driver = getattr(driver, "backing", None)
    return layers


# --------------------------------------------------------------------- plan
def plan_present(lv, source, request, source_sha256):
    """The steps that bring volume ``lv`` (normalize_lv dict or None) to hold ``source``.

    ``source``: {format, virtual_size, fingerprint}; ``request``: {format, size
    (bytes, rounded), size_given, thinpool, update, force, resize, shrink,
    snapshot_before_write}; ``source_sha256()`` hashes the source (called only
    when the fingerprint alone cannot tell).  Returns {steps: [(step, detail)],
    write_reason, new_size, sha256} where steps are create, snapshot, resize,
    zero_tail, write; raises VolumeImageError for refusals.
    """
    fmt = request["format"]
    if lv is None:
        return {"steps": [("create", request["size"]), ("write", "new volume")], "write_reason": "new volume",
                "new_size": request["size"], "sha256": None}
    held = decode_tags(lv["tags"])
    name = "%s/%s" % (lv["vg"], lv["name"])
    if request["thinpool"] and lv["pool"] != request["thinpool"]:
        raise VolumeImageError("%s exists %s, not as a thin volume of pool %s; remove it (state: absent) to "
                               "recreate it there" % (name, "in thin pool %s" % lv["pool"] if lv["pool"] else
                                                      "as a %s volume" % (lv["segtype"] or "non-thin"),
                                                      request["thinpool"]))
    sha256 = held["sha256"]
    reason = None
    if not held["ours"]:
        if not request["force"]:
            raise VolumeImageError("%s exists and was not written by this module (no %s* tags): it may hold data; "
                                   "force: true overwrites it" % (name, TAG_PREFIX))
        reason = "volume not written by this module (force)"
    elif not held["complete"]:
        reason = "the previous write did not complete" if held["writing"] else "incomplete tags"
    else:
        different = None
        if held["format"] != fmt:
            different = "format %s, requested %s" % (held["format"], fmt)
        elif held["virtual_size"] != source["virtual_size"]:
            different = "virtual size %s, source %s" % (held["virtual_size"], source["virtual_size"])
        elif held["source"] != source["fingerprint"]:
            sha256 = source_sha256()
            if sha256 != held["sha256"]:
                different = "content sha256 %s, source %s" % (held["sha256"], sha256)
        if different:
            if not (request["update"] or request["force"]):
                raise VolumeImageError("%s holds another image (%s); update: true (or force: true) rewrites it"
                                       % (name, different))
            reason = "source changed (%s)" % different
    steps = []
    new_size = lv["size"]
    if request["size"] > lv["size"]:
        if not request["resize"]:
            raise VolumeImageError("%s is %d bytes, %d are needed; resize: true grows it"
                                   % (name, lv["size"], request["size"]))
        new_size = request["size"]
    elif request["size"] < lv["size"] and request["size_given"]:
        if not request["shrink"]:
            pass  # grow only: a larger volume is kept
        elif fmt == "qcow2" and reason is None:
            raise VolumeImageError("%s: shrinking a qcow2 volume means rewriting it (clusters may lie past the new "
                                   "end); force: true rewrites it, or leave size alone" % name)
        else:
            new_size = request["size"]
    if reason is not None and request["snapshot_before_write"]:
        steps.append(("snapshot", None))
    if new_size != lv["size"]:
        steps.append(("resize", (lv["size"], new_size)))
    if reason is not None:
        steps.append(("write", reason))
    elif new_size > lv["size"] and fmt == "raw":
        # The guest sees the new end of a raw volume: old data there must not show through.
        steps.append(("zero_tail", (lv["size"], new_size)))
    return {"steps": steps, "write_reason": reason, "new_size": new_size, "sha256": sha256}


def describe_step(step, detail, name, request):
    if step == "create":
        where = " in thin pool %s" % request["thinpool"] if request["thinpool"] else ""
        return "create volume %s (%d bytes%s)" % (name, detail, where)
    if step == "snapshot":
        return "snapshot %s before writing" % name
    if step == "resize":
        verb = "grow" if detail[1] > detail[0] else "shrink"
        return "%s volume %s from %d to %d bytes" % (verb, name, detail[0], detail[1])
    if step == "zero_tail":
        return "zero the new end of %s (bytes %d to %d)" % (name, detail[0], detail[1])
    if step == "write":
        return "write %s image from %s (%s)" % (request["format"], request["src"], detail)
    if step == "remove":
        return "remove volume %s" % name
    return step


def diff_view(vg, lv_name, lv, held, content):
    """Normalised view of a volume for diff before/after."""
    if lv is None:
        return {"vg": vg, "lv": lv_name, "state": "absent"}
    return {
        "vg": vg, "lv": lv_name, "state": "present", "size": lv["size"], "thinpool": lv["pool"],
        "format": held["format"], "virtual_size": held["virtual_size"], "content": content,
    }


def held_content(held):
    if not held["ours"]:
        return "unknown (not written by this module)"
    if not held["complete"]:
        return "incomplete"
    return "sha256:%s" % held["sha256"]


# -------------------------------------------------------------------- write
def walk_source(image):
    """SHA-256 of the guest-visible content of ``image`` (opened), read by
    block status: data in runs of up to MAX_IO bytes, holes hashed as zeroes
    without reading them."""
    digest = hashlib.sha256()
    size = image.virtual_size
    for window in range(0, size, STATUS_WINDOW):
        for run in image.block_status(window, min(STATUS_WINDOW, size - window)):
            start, end = run.start, run.start + run.length
            position = start
            while position < end:
                chunk_end = min(end, position // MAX_IO * MAX_IO + MAX_IO)
                if run.kind == DATA:
                    data = image.read(position, chunk_end - position)
                    if len(data) != chunk_end - position:
                        raise ImageError("short read at offset %d: expected %d bytes, got %d"
                                         % (position, chunk_end - position, len(data)), image.path)
                    digest.update(data)
                else:
                    digest.update(memoryview(_ZEROES)[:chunk_end - position])
                position = chunk_end
    return digest.hexdigest()


def content_sha256(src, src_format, allow_dirs, trusted_files=None):
    """SHA-256 of the guest-visible content of image ``src`` (reads it whole, skipping holes)."""
    with open_image(src, fmt=src_format, allow_dirs=allow_dirs, force_share=False, trusted_files=trusted_files) as image:
        return walk_source(image)


def write_image(image, device, fmt, volume_size, known_zero, allow_dirs=None, trusted_files=None):
    """Write ``image`` (opened source) as a ``fmt`` image onto block device
    ``device`` in place; returns (sha256 of the guest-visible content, stats).

    raw: zero ranges and the volume past the image's end are made to read
    zero (BLKZEROOUT, zeroes written where refused) unless ``known_zero``;
    qcow2: a new image reads zero where nothing is written.  ``allow_dirs``, ``trusted_files``: the path
    policy the source was opened with."""
    settings = ConvertOptions(src_fmt=image.format, on_device=True, target_is_zero=known_zero,
                              zero_tail=fmt == "raw", digest="sha256", allow_dirs=allow_dirs,
                              trusted_files=trusted_files)
    result = image_convert(image.path, device, fmt, settings)
    stats = {"bytes_written": result["bytes_written"], "bytes_zeroed": result["bytes_zeroed"],
             "volume_size": volume_size}
    if fmt == "raw":
        stats["zeroout"] = result["zeroout"]
    return result["digest"], stats


def resize_volume(lvm, lv, size):
    """lvresize ``lv`` (normalize_lv dict) to ``size`` bytes.  lvm2 resizes the origin of classic snapshots
    (lv_attr ``o``) only while it is inactive: an active one is deactivated for it (its snapshots with it) and
    activated again, also when the resize fails (then the resize's error is raised)."""
    if not (lv["attr"][:1] == "o" and lv["active"]):
        lvm.resize(lv["vg"], lv["name"], size)
        return
    lvm.deactivate(lv["vg"], lv["name"])
    try:
        lvm.resize(lv["vg"], lv["name"], size)
    except LvmError:
        try:
            lvm.activate(lv["vg"], lv["name"])
        except LvmError:
            pass
        raise
    lvm.activate(lv["vg"], lv["name"])


def zero_range(device, start, end):
    with open_image(device, fmt="raw", readonly=False) as target:
        target.write_zeroes(start, end - start)
        target.flush()


# ------------------------------------------------------------------ module
def lvm_volume_image_argument_spec():
    return dict(
        vg=dict(type='str', required=True),
        lv=dict(type='str', required=True),
        src=dict(type='path'),
        src_format=dict(type='str'),
        size=dict(type='str'),
        format=dict(type='str', default='raw', choices=list(FORMATS)),
        thinpool=dict(type='str'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        resize=dict(type='bool', default=True),
        shrink=dict(type='bool', default=False),
        update=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        snapshot_before_write=dict(type='bool', default=False),
        allow_dirs=dict(type='list', elements='path', default=[]),
    )


# Constraints between the options, declared with the argument spec (the module passes them to AnsibleModule).
LVM_VOLUME_IMAGE_REQUIRED_IF = [('state', 'present', ('src',))]
LVM_VOLUME_IMAGE_REQUIRED_BY = {'src_format': 'src'}


def lvm_volume_image_info_argument_spec():
    return dict(
        vg=dict(type='str', required=True),
        lv=dict(type='str', required=True),
        format=dict(type='str'),
        force_share=dict(type='bool', default=True),
    )


def volume_view(lv):
    if lv is None:
        return None
    return {"vg": lv["vg"], "lv": lv["name"], "path": lv["path"], "size": lv["size"], "tags": lv["tags"],
            "segtype": lv["segtype"], "thinpool": lv["pool"]}


def read_image_info(path, fmt, force_share=True):
    """Library info of what a device holds (``fmt`` None: probed); the device is the task's own."""
    return image_info(path, fmt=fmt, force_share=force_share, trusted_files=[path])


def ensure_device(lvm, lv):
    """The block device of ``lv`` (its lv_path), activating the volume when it is missing."""
    path = lv["path"]
    if not path:
        raise VolumeImageError("lvm2 reports no device path for %s/%s (lv_path is empty)" % (lv["vg"], lv["name"]))
    if not os.path.exists(path):
        lvm.activate(lv["vg"], lv["name"])
    if not os.path.exists(path):
        raise VolumeImageError("the device %s of %s/%s does not exist after lvchange -ay" % (path, lv["vg"], lv["name"]))
    return path


class VolumeImage:
    """One run of lvm_volume_image."""

    def __init__(self, module, lvm=None):
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode
        self.lvm = lvm or Lvm(module)
        self.actions = []
        self.result = {"changed": False, "actions": self.actions}
        # The path policy the source is opened with (allow_dirs, trusted_files), set by present().
        self.policy = {}

    def validate(self):
        params = self.params
        for problem in (check_vg_name(params["vg"]), check_lv_name(params["lv"]),
                        check_lv_name(params["thinpool"]) if params["thinpool"] else None):
            if problem:
                raise VolumeImageError(problem)
        if isinstance(params["size"], str) and params["size"].strip().startswith(("+", "-")):
            # Never read "+4G" as 4G: the size is the volume's, not a change of it.
            raise VolumeImageError("size %s: a relative size is not supported; give the size the volume should have "
                                   "(an existing smaller volume is grown to it, see resize)" % params["size"])

    def run(self):
        self.validate()
        params = self.params
        vg = self.lvm.vg(params["vg"])
        if vg is None:
            raise VolumeImageError("volume group %s not found (vgs)" % params["vg"])
        lv = self.lvm.lv(params["vg"], params["lv"])
        if params["state"] == "absent":
            return self.absent(lv)
        return self.present(vg, lv)

    def name(self):
        return "%s/%s" % (self.params["vg"], self.params["lv"])

    def absent(self, lv):
        params = self.params
        held = decode_tags(lv["tags"]) if lv else None
        before = diff_view(params["vg"], params["lv"], lv, held, held_content(held) if held else None)
        after = diff_view(params["vg"], params["lv"], None, None, None)
        self.result.update(volume=volume_view(lv), image=None, diff={"before": before, "after": after})
        if lv is None:
            return self.result
        if not held["ours"] and not params["force"]:
            raise VolumeImageError("%s was not written by this module (no %s* tags): it may hold data; force: true "
                                   "removes it" % (self.name(), TAG_PREFIX))
        self.actions.append(describe_step("remove", None, self.name(), params))
        self.result["changed"] = True
        if not self.check_mode:
            self.lvm.remove(params["vg"], params["lv"])
        self.result["volume"] = None
        return self.result

    def present(self, vg, lv):
        params = self.params
        fmt = params["format"]
        allow_dirs = list(params["allow_dirs"] or []) or None
        # The task names src and the volume: the operator's word (diskimage.policy).
        trusted_files = [os.path.abspath(params["src"])] + ([lv["path"]] if lv and lv["path"] else [])
        self.policy = dict(allow_dirs=allow_dirs, trusted_files=trusted_files)
        requested = parse_size(params["size"], "size") if params["size"] is not None else None
        with open_image(params["src"], fmt=params["src_format"], **self.policy) as image:
            virtual_size = image.virtual_size
            required = None
            if fmt == "qcow2":
                required = image_measure(src=params["src"], src_fmt=image.format, out_fmt="qcow2",
                                         **self.policy)["required"]
            size, minimum = volume_size(fmt, virtual_size, required, vg["extent_size"], requested)
            layers = chain_files(image)
            source = {"format": image.format, "virtual_size": virtual_size,
                      "fingerprint": source_fingerprint(layers)}
            request = dict(format=fmt, size=size, size_given=requested is not None, thinpool=params["thinpool"],
                           update=params["update"], force=params["force"], resize=params["resize"],
                           shrink=params["shrink"], snapshot_before_write=params["snapshot_before_write"],
                           src=params["src"])
            hashed = {}

            def source_sha256():
                if "sha256" not in hashed:
                    hashed["sha256"] = walk_source(image)
                return hashed["sha256"]

            if lv is not None and lv["path"] and any(path == os.path.realpath(lv["path"]) for path, st in layers):
                raise VolumeImageError("the source %s is (or is backed by) the volume itself" % params["src"])
            pool = None
            if lv is None and params["thinpool"]:
                pool = self.lvm.thin_pool(params["vg"], params["thinpool"])
                if pool is None:
                    raise VolumeImageError("thin pool %s/%s not found" % (params["vg"], params["thinpool"]))
            if lv is None and not params["thinpool"] and size > vg["free"]:
                raise VolumeImageError("volume group %s has %d bytes free, %d are needed for %s"
                                       % (params["vg"], vg["free"], size, self.name()))
            plan = plan_present(lv, source, request, source_sha256)
            self.result["source"] = {"format": source["format"], "virtual_size": virtual_size,
                                     "required_size": minimum}
            held = decode_tags(lv["tags"]) if lv else None
            before = diff_view(params["vg"], params["lv"], lv, held, held_content(held) if held else None)
            self.actions.extend(describe_step(step, detail, self.name(), request) for step, detail in plan["steps"])
            refresh_fingerprint = (lv is not None and plan["write_reason"] is None and held["complete"]
                                   and held["source"] != source["fingerprint"])
            after_lv = dict(lv) if lv else {"size": size, "pool": params["thinpool"]}
            after_lv["size"] = plan["new_size"]
            if plan["write_reason"] is None:
                after = diff_view(params["vg"], params["lv"], after_lv, held, held_content(held))
            else:
                after = diff_view(params["vg"], params["lv"], after_lv,
                                  {"format": fmt, "virtual_size": virtual_size}, "written from %s" % params["src"])
            self.result["diff"] = {"before": before, "after": after}
            self.result["changed"] = bool(plan["steps"])
            if self.check_mode:
                self.result["volume"] = volume_view(lv)
                self.result["image"] = self.read_volume_image(lv, fmt) if (lv and not plan["steps"]) else None
                return self.result
            if refresh_fingerprint:
                # The source's files changed but not its content: only the fingerprint cache is updated.
                self.lvm.change_tags(params["vg"], params["lv"], add=[TAG_SOURCE + source["fingerprint"]],
                                     delete=[TAG_SOURCE + held["source"]])
            lv = self.execute(plan, lv, image, source, pool, fmt, size)
        self.result["volume"] = volume_view(lv)
        self.result["image"] = self.read_volume_image(lv, fmt)
        return self.result

    def execute(self, plan, lv, image, source, pool, fmt, size):
        """Carry out the plan's steps; a failure after a first step is reported by failure_after."""
        done = []
        begun = {}
        try:
            return self._execute_steps(plan, lv, image, source, pool, fmt, size, done, begun)
        except (LvmError, ImageError, VolumeImageError, OSError, IOError) as exc:
            raise self.failure_after(plan, done, begun, exc)

    def failure_after(self, plan, done, begun, exc):
        """The error to raise when a step failed.  ``done``: indexes of the steps carried out; ``begun``: what the
        failed step itself changed (``write``: the tags say "writing"; ``tagged``: the writing tag put on before
        growing).  A volume this run created is removed again (the task changed nothing); otherwise the error
        carries changed and the actions done, or is ``exc`` itself when nothing changed."""
        vg_name, lv_name = self.params["vg"], self.params["lv"]
        failed = self.actions[len(done)] if len(done) < len(self.actions) else "the last step"
        reason = "%s failed: %s" % (failed, failure_text(exc))
        extra = {}
        if isinstance(exc, LvmError):
            extra = {"cmd": exc.cmd, "rc": exc.rc, "stderr": exc.stderr}
        if done and plan["steps"][done[0]][0] == "create":
            try:
                self.lvm.remove(vg_name, lv_name)
            except (LvmError, OSError) as removal:
                reason = "%s; removing the new volume again failed too: %s" % (reason, removal)
            else:
                return VolumeImageError("%s; the volume %s created before it is removed again, so nothing is changed"
                                        % (reason, self.name()), result=dict(extra, changed=False, actions=[]))
        if not done and "write" not in begun:
            if begun.get("tagged"):
                try:
                    self.lvm.change_tags(vg_name, lv_name, delete=[TAG_WRITING])
                except (LvmError, OSError):
                    pass
            return exc
        actions = [self.actions[index] for index in done]
        if "write" in begun:
            actions.append("%s (interrupted: the volume carries the %s tag and is written again whole by the next "
                           "run)" % (self.actions[begun["write"]], TAG_WRITING))
        return VolumeImageError("%s; done before the failure: %s" % (reason, "; ".join(actions)),
                                result=dict(extra, changed=True, actions=actions))

    def _execute_steps(self, plan, lv, image, source, pool, fmt, size, done, begun):
        params = self.params
        vg_name, lv_name = params["vg"], params["lv"]
        known_zero = False
        if lv is not None and any(step == "write" for step, detail in plan["steps"]):
            # A write to a device that a running guest holds is refused before any step: no snapshot or resize
            # is made for a write that cannot happen.
            open_image(ensure_device(self.lvm, lv), fmt="raw", readonly=False).close()
        if any(step == "zero_tail" for step, detail in plan["steps"]):
            # Until the new end reads zero the volume counts as incomplete: a failure in between
            # leaves it to be rewritten whole by the next run, never grown with old data showing.
            self.lvm.change_tags(vg_name, lv_name, add=[TAG_WRITING])
            begun["tagged"] = True
        for index, (step, detail) in enumerate(plan["steps"]):
            if step == "create":
                self.lvm.create(vg_name, lv_name, size, thinpool=params["thinpool"], tags=[TAG_WRITING])
                # A new thin volume reads zero where nothing was written, and written blocks are
                # zero-filled first when the pool zeroes new blocks (lvs -o zero).
                known_zero = bool(pool and pool["zero"])
                lv = self.reload()
            elif step == "snapshot":
                snapshot = "%s_snap_%s" % (lv_name, time.strftime("%Y%m%d%H%M%S", time.gmtime()))
                self.lvm.snapshot(vg_name, lv_name, snapshot, thin=bool(lv["pool"]))
                self.result["snapshot"] = snapshot
                # a classic snapshot makes the volume an origin (lv_attr o), which resize_volume must know
                lv = self.reload()
            elif step == "resize":
                resize_volume(self.lvm, lv, detail[1])
                lv = self.reload()
            elif step == "zero_tail":
                if not lv["pool"]:
                    zero_range(ensure_device(self.lvm, lv), detail[0], detail[1])
                self.lvm.change_tags(vg_name, lv_name, delete=[TAG_WRITING])
            elif step == "write":
                device = ensure_device(self.lvm, lv)
                # Refused here (a running guest holds the device) before the tags say "writing".
                open_image(device, fmt="raw", readonly=False).close()
                self.lvm.change_tags(vg_name, lv_name, add=[] if TAG_WRITING in lv["tags"] else [TAG_WRITING],
                                     delete=[tag for tag in own_tags(lv["tags"]) if tag != TAG_WRITING])
                begun["write"] = index
                sha256, stats = write_image(image, device, fmt, lv["size"], known_zero, **self.policy)
                self.result["write"] = stats
                final_tags = encode_tags(fmt, source["virtual_size"], sha256, source["fingerprint"])
                self.lvm.change_tags(vg_name, lv_name, add=final_tags, delete=[TAG_WRITING])
                begun.pop("write")
                lv = self.reload()
            done.append(index)
        return self.reload() if lv is not None else lv

    def reload(self):
        lv = self.lvm.lv(self.params["vg"], self.params["lv"])
        if lv is None:
            raise VolumeImageError("%s is missing from lvs after it was changed" % self.name())
        return lv

    def read_volume_image(self, lv, fmt):
        if lv is None or not lv["path"] or not os.path.exists(lv["path"]):
            return None
        return read_image_info(lv["path"], fmt)


def run_lvm_volume_image(module):
    return VolumeImage(module).run()


def run_lvm_volume_image_info(module):
    params = module.params
    for problem in (check_vg_name(params["vg"]), check_lv_name(params["lv"])):
        if problem:
            raise VolumeImageError(problem)
    lvm = Lvm(module)
    result = {"changed": False, "exists": False, "volume": None, "holds": None, "image": None}
    if lvm.vg(params["vg"]) is None:
        raise VolumeImageError("volume group %s not found (vgs)" % params["vg"])
    lv = lvm.lv(params["vg"], params["lv"])
    if lv is None:
        return result
    held = decode_tags(lv["tags"])
    result["exists"] = True
    result["volume"] = volume_view(lv)
    result["holds"] = {"written_by_module": held["ours"], "complete": held["complete"], "format": held["format"],
                       "virtual_size": held["virtual_size"], "sha256": held["sha256"], "source": held["source"]}
    fmt = params["format"] or (held["format"] if held["complete"] else None)
    if lv["path"] and os.path.exists(lv["path"]):
        result["image"] = read_image_info(lv["path"], fmt, params["force_share"])
    return result
