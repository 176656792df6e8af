"""The fuzz targets and what counts as a failure.

Each target takes the fuzzer's bytes and runs the product code a tenant's
archive reaches in glance-api, under small :class:`Limits` so the fuzzer
runs into every limit:

``archive``
    the bytes are an image archive file (outer tar, optionally gzip/zstd/
    xz/bzip2 as a whole): ``open_image`` (docker-save and OCI layouts,
    manifests, indexes, config JSON, selection), the Glance properties of
    the config, ``Image.flatten`` (layer streams, decompression, layer tar
    reading, the flattener) into the disk builder's input scan
    (``tarscan.Scanner`` fed by the writer, as ``build_disk`` does), then
    ``tarscan.scan`` of the written tar.
``archive-unverified``
    the same with digest and size verification switched off (in this
    process only), so mutated manifests, configs and layer data reach the
    code behind the digest checks instead of stopping at them.
``layers``
    the bytes are layer tars joined by :data:`LAYER_SEP`; the harness
    wraps them in a valid archive (OCI or docker-save, each layer stored
    plain, gzip or zstd as its first byte says, every digest right), so
    mutations of the tars reach the flattener and the content pass.
``layout``
    the bytes are JSON documents joined by :data:`JSON_SEP`: the first is
    ``index.json`` (or a docker-save ``manifest.json`` when it is a list),
    the others blobs (image indexes, manifests, configs) whose digests and
    sizes the harness fills in (``@N`` placeholders), with one small fixed
    layer: mutations reach the layout, manifest and config parsers.
``tarscan``
    the bytes are the disk builder's input tar: ``tarscan.scan`` then
    ``sizing.compute`` of its statistics.

A failure (what the fuzzer reports as a crash) is any exception other
than :class:`~docker_rootfs.errors.Docker2VMError` with a non-empty
one-line message, and, after every input, anything left behind: a file in
the temporary directory, an open file descriptor or a running thread more
than before. After a successful flatten, the writer's own report of its
members must equal a scan of the tar it wrote, and the Glance properties
must give back the config they were made from.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading

import zstandard

from docker_rootfs import errors, properties
from docker_rootfs.archive import open_image, streams
from docker_rootfs.disk import sizing, tarscan
from docker_rootfs.disk.options import DiskOptions
from docker_rootfs.limits import Limits

KiB, MiB = 1024, 1024 * 1024

# The project's configurable limits, small so that inputs of a few KiB
# reach them (defaults: 256 layers, 2M entries, 64 GiB, ...).
LIMITS = Limits(max_layers=8, max_entries=400, max_total_bytes=8 * MiB, max_file_size=2 * MiB,
                max_path_length=512, max_path_depth=24, max_compression_ratio=40,
                max_json_size=256 * KiB, max_archive_entries=400)
# Decompressed bytes before the compression ratio is checked (a module
# constant, 64 MiB in the product; lowered here so the ratio guard runs
# inside max_total_bytes).
RATIO_GRACE_BYTES = 256 * KiB

LAYER_SEP = b"\n\0docker2vm-fuzz-layer\0\n"
LAYER_MODES = ("none", "gzip", "zstd", "raw")
BLOCK = tarfile.BLOCKSIZE


class Finding(AssertionError):
    """A harness invariant broke (not an exception of the code under test)."""


def configure():
    """Process-wide settings every target relies on."""
    streams.RATIO_GRACE_BYTES = RATIO_GRACE_BYTES


class Sandbox:
    """One directory per fuzzing process: the input file, the flattened
    output and the product's temporary directory, which must be empty after
    every input. Remembers the open descriptors and threads to compare."""

    def __init__(self, base=None):
        self.dir = tempfile.mkdtemp(prefix="docker2vm-fuzz-", dir=base)
        self.tmp = os.path.join(self.dir, "tmp")
        os.mkdir(self.tmp)
        self.input = os.path.join(self.dir, "input")
        self.out = os.path.join(self.dir, "rootfs.tar")
        self.fds = self._fds()
        self.threads = threading.active_count()

    @staticmethod
    def _fds():
        return len(os.listdir("/proc/self/fd"))

    def write_input(self, data):
        with open(self.input, "wb") as f:
            f.write(data)
        return self.input

    def check_clean(self):
        left = os.listdir(self.tmp)
        if left:
            for name in left:
                p = os.path.join(self.tmp, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            raise Finding(f"temporary files left behind: {sorted(left)}")
        if threading.active_count() > self.threads:
            raise Finding(f"threads left running: {[t.name for t in threading.enumerate()]}")
        fds = self._fds()
        if fds > self.fds:
            raise Finding(f"file descriptors leaked: {fds} open, {self.fds} before")

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def run_one(target, data, sandbox):
    """Run ``target`` on ``data``; True when the input was accepted, False
    when refused with one clear line; anything else raises."""
    try:
        target(data, sandbox)
        accepted = True
    except errors.Docker2VMError as exc:
        msg = str(exc)
        if not msg.strip() or "\n" in msg or "\r" in msg:
            raise Finding(f"{type(exc).__name__} is not a one-line message: {msg!r}") from exc
        accepted = False
    sandbox.check_clean()
    return accepted


# -- the pipeline shared by the archive targets ----------------------------------

class _Recorder:
    """The output file of a flatten, feeding the builder's Scanner as
    build_disk's spool does (``member_written``)."""

    def __init__(self, f, scanner):
        self.f = f
        self.scanner = scanner

    def write(self, b):
        return self.f.write(b)

    def flush(self):
        self.f.flush()

    def member_written(self, tarinfo, data_offset):
        self.scanner.add(tarinfo, data_offset)


def _comparable(entry):
    """An Entry without where its data is read from (a writer may point
    the builder at another file than the tar)."""
    return {k: v for k, v in dataclasses.asdict(entry).items() if k not in ("fd", "offset")} \
        if entry.kind != tarscan.REG else {k: v for k, v in dataclasses.asdict(entry).items() if k != "fd"}


def convert(path, sandbox):
    with open_image(path, limits=LIMITS, tmpdir=sandbox.tmp) as img:
        props = properties.image_properties(img.config)
        back = properties.config_from_properties(props)
        for attr, _ in properties.CONFIG_PROPERTIES.values():
            if getattr(back, attr) != getattr(img.config, attr):
                raise Finding(f"Glance properties do not give back the config's {attr}: "
                              f"{getattr(img.config, attr)!r} -> {getattr(back, attr)!r}")
        img.summary()
        scanner = tarscan.Scanner(LIMITS.max_entries)
        with open(sandbox.out, "wb") as f:
            img.flatten(_Recorder(f, scanner))
    entries, stats = tarscan.scan(sandbox.out, max_entries=LIMITS.max_entries)
    read, told = [_comparable(e) for e in entries], [_comparable(e) for e in scanner.entries]
    if read != told:
        diff = next((a, b) for a, b in zip(read + [None] * len(told), told + [None] * len(read)) if a != b)
        raise Finding(f"the written tar scans differently from what the writer reported: {diff}")
    sizing.compute(stats, DiskOptions())


def target_archive(data, sandbox):
    convert(sandbox.write_input(data), sandbox)


@contextlib.contextmanager
def digests_unverified():
    """DigestReader.verify checks nothing (digests and sizes), in this process."""
    saved = streams.DigestReader.verify
    streams.DigestReader.verify = lambda self: None
    try:
        yield
    finally:
        streams.DigestReader.verify = saved


def target_archive_unverified(data, sandbox):
    if streams.sniff_compression(data[:8]) == "none":
        data = fix_checksums(data)
    with digests_unverified():
        convert(sandbox.write_input(data), sandbox)


# -- layers wrapped in a valid archive --------------------------------------------

def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(raw, mode):
    if mode == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0)
    if mode == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(raw)
    return raw


def _uncompressed(blob):
    """The diff_id source of a blob given as is ("raw" mode)."""
    try:
        if blob[:2] == streams.GZIP_MAGIC:
            return gzip.decompress(blob)
        if blob[:4] == streams.ZSTD_MAGIC:
            return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    except Exception:
        pass
    return blob


def fix_checksums(tar):
    """``tar`` with the checksum of every header block it can walk to set
    right, so that the fuzzer's mutations of header fields reach the code
    behind tarfile's checksum test (the ``archive`` target still feeds bad
    checksums as they come)."""
    buf = bytearray(tar)
    pos = 0
    while pos + BLOCK <= len(buf):
        block = buf[pos:pos + BLOCK]
        if block == bytes(BLOCK):
            pos += BLOCK
            continue
        block[148:156] = b" " * 8
        buf[pos + 148:pos + 156] = b"%06o\0 " % sum(block)
        try:
            size = tarfile.nti(bytes(block[124:136]))
        except (tarfile.HeaderError, ValueError):
            break
        if size < 0 or block[156:157] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        pos += BLOCK + -(-size // BLOCK) * BLOCK
    return bytes(buf)


def split_layers(data):
    """Fuzz bytes -> (docker_save, [(mode, tar bytes)])."""
    chunks = data.split(LAYER_SEP)[:LIMITS.max_layers + 1]
    layers = []
    for chunk in chunks:
        mode = LAYER_MODES[chunk[0] % 4] if chunk else "none"
        layers.append((mode, chunk[1:] if mode == "raw" else fix_checksums(chunk[1:])))
    docker_save = bool(chunks[0][:1]) and bool(chunks[0][0] & 4)
    return docker_save, layers


def join_layers(layers, docker_save=False):
    """The inverse of :func:`split_layers` (for seeds)."""
    chunks = []
    for i, (mode, tar) in enumerate(layers):
        b = LAYER_MODES.index(mode) | (4 if docker_save and i == 0 else 0)
        chunks.append(bytes([b]) + tar)
    return LAYER_SEP.join(chunks)


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, content in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(content), 1700000000, 0o644
            tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def build_archive(layers, docker_save=False):
    """An image archive holding ``layers`` [(mode, tar bytes)], every
    digest and size right."""
    blobs, diff_ids = [], []
    for mode, tar in layers:
        blob = tar if mode in ("none", "raw") else compress(tar, mode)
        blobs.append((mode, blob))
        diff_ids.append(sha256(_uncompressed(blob) if mode == "raw" else tar))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    if docker_save:
        files = [(sha256(config)[7:] + ".json", config)]
        names = []
        for i, (_, blob) in enumerate(blobs):
            names.append(f"{i:064x}/layer.tar")
            files.append((names[-1], blob))
        manifest = [{"Config": files[0][0], "RepoTags": ["fuzz:latest"], "Layers": names}]
        files.append(("manifest.json", json.dumps(manifest).encode()))
        return _tar(files)
    media = {"none": "application/vnd.oci.image.layer.v1.tar",
             "raw": "application/vnd.oci.image.layer.v1.tar",
             "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
             "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
             ("blobs/sha256/" + sha256(config)[7:], config)]
    descs = []
    for mode, blob in blobs:
        files.append(("blobs/sha256/" + sha256(blob)[7:], blob))
        descs.append({"mediaType": media[mode], "digest": sha256(blob), "size": len(blob)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(config), "size": len(config)},
                           "layers": descs}).encode()
    files.append(("blobs/sha256/" + sha256(manifest)[7:], manifest))
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "fuzz"}}]}
    files.append(("index.json", json.dumps(index).encode()))
    return _tar(files)


def target_layers(data, sandbox):
    docker_save, layers = split_layers(data)
    convert(sandbox.write_input(build_archive(layers, docker_save)), sandbox)


# -- layouts, manifests and configs ------------------------------------------------

JSON_SEP = b"\n\0docker2vm-fuzz-json\0\n"
FIXED_LAYER = _tar([("etc/hostname", b"fuzz\n"), ("bin/sh", b"#!/bin/true\n")])
_PLACEHOLDER = re.compile(rb"@([0-9LD])")


def _walk_sizes(doc, sizes):
    if isinstance(doc, dict):
        d = doc.get("digest")
        if isinstance(d, str) and d.startswith("sha256:") and d[7:] in sizes and "size" in doc:
            doc["size"] = sizes[d[7:]]
        for v in doc.values():
            _walk_sizes(v, sizes)
    elif isinstance(doc, list):
        for v in doc:
            _walk_sizes(v, sizes)


def resolve_documents(data):
    """Fuzz bytes -> (head document, [blob documents]) with placeholders
    resolved: ``@N`` is the sha256 hex of blob N (a blob refers to later
    blobs only), ``@L`` of :data:`FIXED_LAYER`, ``@D`` its diff_id (the
    same: it is stored plain); in a document that parses, every
    descriptor's ``size`` is set to the size of the blob it names."""
    docs = data.split(JSON_SEP)[:10]
    head, blobs = docs[0], docs[1:]
    layer_hex = hashlib.sha256(FIXED_LAYER).hexdigest()
    sizes = {layer_hex: len(FIXED_LAYER)}
    done = [None] * len(blobs)

    def subst(doc, first):
        def one(m):
            key = m.group(1)
            if key in (b"L", b"D"):
                return layer_hex.encode()
            n = int(key)
            if first <= n < len(done) and done[n] is not None:
                return hashlib.sha256(done[n]).hexdigest().encode()
            return m.group(0)
        doc = _PLACEHOLDER.sub(one, doc)
        try:
            parsed = json.loads(doc)
        except (ValueError, RecursionError):
            return doc
        _walk_sizes(parsed, sizes)
        return json.dumps(parsed, separators=(",", ":")).encode()

    for i in reversed(range(len(blobs))):
        done[i] = subst(blobs[i], i + 1)
        sizes[hashlib.sha256(done[i]).hexdigest()] = len(done[i])
    return subst(head, 0), done


def build_layout(data):
    head, blobs = resolve_documents(data)
    files = [("blobs/sha256/" + hashlib.sha256(FIXED_LAYER).hexdigest(), FIXED_LAYER)]
    for blob in blobs:
        hexd = hashlib.sha256(blob).hexdigest()
        files += [("blobs/sha256/" + hexd, blob), (hexd + ".json", blob)]
    if head.lstrip()[:1] == b"[":
        files.append(("manifest.json", head))
    else:
        files += [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", head)]
    return _tar(files)


_ODD_VALUES = (None, True, False, 0, -1, 2 ** 64, 1.5, "", "x", "sha256:", [], [1], ["x"], {}, {"a": 1},
               {"os": "linux"}, "application/vnd.oci.image.index.v1+json",
               "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")


def _slots(doc, out):
    """Every (container, key) in a parsed JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((doc, k))
            _slots(v, out)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((doc, i))
            _slots(v, out)
    return out


def mutate_json(data, rng):
    """A structure-aware mutation for the ``layout`` target: in one JSON
    document of ``data``, a value becomes one of another type, another
    value of the document or a deep nest, or a key or element is dropped
    or repeated. None when no document parses (the caller then mutates
    bytes)."""
    docs = data.split(JSON_SEP)
    order = list(range(len(docs)))
    rng.shuffle(order)
    for i in order:
        try:
            doc = json.loads(docs[i])
        except (ValueError, RecursionError):
            continue
        slots = _slots(doc, [])
        if not slots:
            continue
        container, key = rng.choice(slots)
        action = rng.randrange(6)
        if action == 0:
            container[key] = rng.choice(_ODD_VALUES)
        elif action == 1:
            container[key] = rng.choice(slots)[0]
        elif action == 2:
            container[key] = [container[key]] if rng.random() < 0.5 else {"x": container[key]}
        elif action == 3:
            del container[key]
        elif action == 4 and isinstance(container, list):
            container.insert(key, container[key])
        elif action == 4:
            container[key + "x" if isinstance(key, str) else key] = container[key]
        else:
            depth = rng.choice((10, 1000, 100000))
            container[key] = json.loads("[" * depth + "]" * depth) if depth < 900 else "NEST"
        try:
            text = json.dumps(doc, separators=(",", ":"), check_circular=True).encode()
        except (ValueError, RecursionError):
            continue
        if b'"NEST"' in text:
            depth = rng.choice((1000, 100000))
            text = text.replace(b'"NEST"', b"[" * depth + b"]" * depth, 1)
        docs[i] = text
        return JSON_SEP.join(docs)
    return None


def target_layout(data, sandbox):
    convert(sandbox.write_input(build_layout(data)), sandbox)


# -- the disk builder: its input scan and the build itself ---------------------------

# Seeds the build's ids (the image digest a real conversion passes).
BUILD_DIGEST = "sha256:" + "f0" * 32


def target_build(data, sandbox):
    """The filesystem build itself: the fuzzer's tar (checksums fixed) made
    into an ext4 image by the ext2fs builder (libext2fs in this process,
    blocks and inodes the builder writes by hand for small files). Refused
    with one line, or built into a filesystem ``e2fsck -fn`` finds clean:
    an unclean one is a finding, not a refusal."""
    from docker_rootfs.disk import build_disk
    tar = sandbox.write_input(fix_checksums(data))
    raw = os.path.join(sandbox.dir, "rootfs.raw")
    # Small and quick; e2fsck always on: it is the oracle.
    options = DiskOptions(builder="ext2fs", disk_format="raw", fsck=True, tmp_dir=sandbox.tmp,
                          free_space_mib=1, free_space_percent=0, min_size_mib=1)
    try:
        build_disk(tar, raw, options, digest=BUILD_DIGEST, max_entries=LIMITS.max_entries)
    except errors.ToolError as exc:
        if "not clean" in str(exc):
            raise Finding(f"the builder made an unclean filesystem: {exc}") from exc
        raise
    finally:
        if os.path.exists(raw):
            os.unlink(raw)


def target_tarscan(data, sandbox):
    _, stats = tarscan.scan(sandbox.write_input(fix_checksums(data)), max_entries=LIMITS.max_entries)
    sizing.compute(stats, DiskOptions())


# -- planted bugs (the smoke test checks that the fuzzer finds them) -------------------

def _plant_multiline():
    """A refusal whose message has two lines (breaks the one-line rule)."""
    from docker_rootfs import flatten
    real = flatten.split_path

    def split_path(name, limits, what):
        try:
            return real(name, limits, what)
        except errors.UnsafeEntry as exc:
            raise errors.UnsafeEntry(f"{exc}\n(planted second line)") from None
    flatten.split_path = split_path


def _plant_uid():
    """A KeyError for an entry owned by uid 1 in the builder's input scan:
    no seed has one (the smoke test's seeds are all root's), so only a
    mutation reaches it (libFuzzer's ASCII-integer mutation of the uid
    field, kept valid by :func:`fix_checksums`)."""
    real = tarscan.Scanner.add

    def add(self, m, *args, **kwargs):
        if m.uid == 1:
            raise KeyError("planted bug")
        return real(self, m, *args, **kwargs)
    tarscan.Scanner.add = add


PLANTS = {"multiline": _plant_multiline, "uid": _plant_uid}


def plant(name):
    """Put planted bug ``name`` into this process (DOCKER2VM_FUZZ_PLANT)."""
    PLANTS[name]()


TARGETS = {
    "archive": target_archive,
    "archive-unverified": target_archive_unverified,
    "layers": target_layers,
    "layout": target_layout,
    "tarscan": target_tarscan,
    "build": target_build,
}
