# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Coverage-guided fuzzer of the image library, one format per run (issue #15; atheris, i.e. libFuzzer).

    python tests/fuzz/fuzz_image.py --format qcow2 --out /var/tmp/kvm-storage-fuzz [libFuzzer options...]

The target writes each input to a file in a private temporary directory (the library opens paths) and runs
probe, info, open + block_status + read, check and map on it, the format given (or probed, for ``probe``).
The only acceptable outcomes are success and an ``ImageError``; any other exception is a finding: its input
and traceback are saved in ``<out>/<format>/findings/`` (one per distinct place it was raised) and the run
goes on.  A hang or a memory bomb stops the run: libFuzzer's ``-timeout`` and ``-rss_limit_mb`` save the input
as ``timeout-*``/``oom-*`` in the same directory, and an address-space limit turns a large allocation into a
MemoryError, a finding like any other.  tests/fuzz/run.py (``make fuzz``) runs this per format.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PACKAGE = "ansible_collections.kvm.storage.plugins.module_utils.diskimage"

# Bounds of one input: at most this much is read through open_image, and block_status looks this far.
READ_BUDGET = 1 << 20
STATUS_SPAN = 64 << 20
# The address space the process may grow by beyond what it has at start (a larger allocation is a MemoryError):
# the 256 MiB the hostile-image corpus gives a case (tests/unit/hardening/sandbox.py).
ADDRESS_SPACE_MARGIN = 256 << 20


def import_library():
    """Import the checkout as ansible_collections.kvm.storage (a symlink in a private temporary directory)."""
    tmp = tempfile.mkdtemp(prefix="kvm-storage-fuzz-import-")
    os.makedirs(os.path.join(tmp, "ansible_collections", "kvm"))
    os.symlink(str(ROOT), os.path.join(tmp, "ansible_collections", "kvm", "storage"))
    sys.path.insert(0, tmp)
    atexit.register(shutil.rmtree, tmp, True)


def load_every_module():
    """Import every module of the library now (drivers and operations are otherwise imported lazily)."""
    import importlib  # pylint: disable=import-outside-toplevel
    import pkgutil  # pylint: disable=import-outside-toplevel
    package = importlib.import_module(PACKAGE)
    for found in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        importlib.import_module(found.name)
    return package


# Pure-Python loops that only compute a checksum over whole structures: run uncovered (the same source, compiled
# without atheris's instrumentation), or an instrumented CRC-32C makes a sound VHDX take seconds per input.
UNINSTRUMENTED = (("formats.vhdx", "crc32c"),)


def uninstrument(package):
    """Replace each function of UNINSTRUMENTED by the same source compiled without instrumentation."""
    import importlib  # pylint: disable=import-outside-toplevel
    import inspect  # pylint: disable=import-outside-toplevel
    import textwrap  # pylint: disable=import-outside-toplevel
    for module_name, function_name in UNINSTRUMENTED:
        module = importlib.import_module("%s.%s" % (package.__name__, module_name))
        source = textwrap.dedent(inspect.getsource(getattr(module, function_name)))
        namespace = {}
        exec(compile(source, module.__file__, "exec"), module.__dict__, namespace)  # pylint: disable=exec-used
        setattr(module, function_name, namespace[function_name])


class Target:
    """The fuzz target of one format: ``run(data)`` raises nothing but a finding."""

    def __init__(self, fmt, findings_dir=None):
        # pylint: disable=import-outside-toplevel
        from ansible_collections.kvm.storage.plugins.module_utils import diskimage
        from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe
        sys.path.insert(0, str(HERE))
        import seeds
        self.diskimage = diskimage
        self.seeds = seeds
        self.format_name = fmt
        self.probe = probe.probe
        self.fmt = None if fmt == "probe" else fmt
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="kvm-storage-fuzz-%s-" % fmt))
        atexit.register(shutil.rmtree, str(self.workdir), True)
        for name, content in seeds.AUX_FILES.items():
            (self.workdir / name).write_bytes(content)
            os.chmod(self.workdir / name, 0o444)
        self.path = str(self.workdir / seeds.input_name(fmt))
        self.findings_dir = pathlib.Path(findings_dir) if findings_dir else None
        self.findings = {}      # signature -> (exception text, input)
        self.executions = 0

    def operations(self):
        """(name, callable) of every operation tried on an input."""
        lib = self.diskimage
        common = dict(fmt=self.fmt, allow_dirs=[str(self.workdir)])
        return (
            ("probe", lambda: self.probe(self.path)),
            ("info", lambda: lib.info(self.path, **common)),
            ("info-chain", lambda: lib.info(self.path, backing_chain=True, **common)),
            ("read", self.read),
            ("check", lambda: lib.check(self.path, **common)),
            ("map", lambda: lib.map(self.path, **common)),
        )

    def read(self):
        """open_image, block_status over the first STATUS_SPAN bytes, and reads of at most READ_BUDGET bytes."""
        with self.diskimage.open_image(self.path, fmt=self.fmt, allow_dirs=[str(self.workdir)],
                                       key_secret=PASSPHRASE) as image:
            size = image.virtual_size
            extents = image.block_status(0, min(size, STATUS_SPAN))
            budget = READ_BUDGET
            wanted = [(0, 65536), (max(0, size - 4096), 4096)]
            wanted += [(extent[0], extent[1]) for extent in extents[:16]]
            for offset, length in wanted:
                length = min(length, budget, size - offset)
                if length <= 0:
                    continue
                data = image.read(offset, length)
                if len(data) != length:
                    raise AssertionError("read(%d, %d) returned %d bytes" % (offset, length, len(data)))
                budget -= length

    def run(self, data):
        """Run every operation on ``data``; a finding is recorded (and returned as its signature), never raised."""
        self.executions += 1
        self.seeds.write_input(self.path, self.format_name, data)
        found = []
        for name, operation in self.operations():
            try:
                operation()
            except self.diskimage.ImageError:
                pass
            except Exception as exc:  # pylint: disable=broad-exception-caught
                found.append(self.record(name, exc, data))
        return found

    def record(self, operation, exc, data):
        """Remember a finding by where it was raised; save its first input and traceback."""
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [frame for frame in frames if "module_utils" in frame.filename] or frames
        where = ours[-1]
        signature = "%s %s at %s:%d (%s)" % (operation, type(exc).__name__, os.path.basename(where.filename),
                                             where.lineno, where.name)
        if signature not in self.findings:
            text = "%s\n%s" % (signature, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            self.findings[signature] = (text, data)
            sys.stderr.write("FINDING %s\n" % signature)
            if self.findings_dir is not None:
                self.findings_dir.mkdir(parents=True, exist_ok=True)
                name = "finding-" + hashlib.sha1(signature.encode()).hexdigest()[:12]
                (self.findings_dir / name).write_bytes(data)
                (self.findings_dir / (name + ".txt")).write_text(text)
        return signature


PASSPHRASE = "fuzz"


def limit_address_space(margin=ADDRESS_SPACE_MARGIN):
    """Cap the address space at what the process has now plus ``margin`` (a bomb becomes a MemoryError)."""
    with open("/proc/self/status") as status:
        vm_size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + margin, vm_size + margin))


def main(argv=None):
    """Run atheris on one format; arguments after ours go to libFuzzer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--format", required=True)
    parser.add_argument("--out", required=True, help="directory of the corpus and findings (outside the repository)")
    args, libfuzzer_args = parser.parse_known_args(argv)
    import atheris  # pylint: disable=import-outside-toplevel,import-error
    import_library()
    with atheris.instrument_imports(include=[PACKAGE]):
        package = load_every_module()
    uninstrument(package)
    sys.path.insert(0, str(HERE))
    import seeds  # pylint: disable=import-outside-toplevel
    if args.format not in seeds.FORMATS:
        parser.error("unknown format %r (known: %s)" % (args.format, ", ".join(seeds.FORMATS)))
    out = pathlib.Path(args.out) / args.format
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        with tempfile.TemporaryDirectory(prefix="kvm-storage-fuzz-seeds-") as work:
            for data in seeds.make_seeds(args.format, work):
                (corpus / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)
    if not any(corpus.iterdir()):
        sys.exit("no seed input could be made for %s:\n%s" % (args.format, "\n".join(seeds.FAILURES) or "(no command failed)"))
    max_len = max(path.stat().st_size for path in corpus.iterdir())
    (out / "findings").mkdir(exist_ok=True)
    target = Target(args.format, out / "findings")

    def one_input(data):
        target.run(data)

    limit_address_space()
    atheris.Setup([sys.argv[0], "-artifact_prefix=%s/" % (out / "findings"), "-max_len=%d" % max_len]
                  + libfuzzer_args + [str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
