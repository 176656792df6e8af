"""Read a tenant's image archive: ``open_image(path)`` gives the selected
image's :class:`~docker_rootfs.config.ContainerConfig`, its layers, and
``flatten(out)`` writing the merged root filesystem as one PAX tar.

Every blob is verified while it streams by: config digest, layer blob
digests and sizes, and each layer's uncompressed diff_id.
"""

import contextlib
import dataclasses
import hashlib
import logging
import tarfile
import tempfile

from docker_rootfs import errors
from docker_rootfs.archive import layertar, layouts, streams
from docker_rootfs.archive.outer import OuterArchive, parse_json
from docker_rootfs.config import ContainerConfig
from docker_rootfs.flatten import Flattener
from docker_rootfs.limits import Limits

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Layer:
    index: int
    path: str
    media_type: str
    digest: str | None
    diff_id: str
    size: int
    compression: str = ""   # known after the first read

    def describe(self):
        return (self.digest or self.diff_id)[:19]

    def to_dict(self):
        return dataclasses.asdict(self)


class LayerReader:
    """One layer of an image: :meth:`members` streams its tar members once
    (verifying digests), :meth:`content` then reads file data by offset."""

    def __init__(self, image, layer):
        self.image = image
        self.layer = layer

    def describe(self):
        return self.layer.describe()

    @contextlib.contextmanager
    def members(self, budget):
        """Yield an iterator of ``(offset_data, TarInfo, TarFile)``; the
        blob digest, size and diff_id are verified when it is exhausted.

        Reading, hashing, decompressing and spooling run in threads (both cores)
        while the caller parses. A compressed layer's uncompressed stream is
        also spooled to an anonymous temporary file, so :meth:`content`
        needs no second decompression."""
        img, layer = self.image, self.layer
        what = f"layer {layer.index + 1} ({layer.describe()})"
        blob = streams.DigestReader(img.outer.open(layer.path), what, layer.digest, layer.size)
        head = blob.read(8)
        comp = streams.sniff_compression(head)
        declared = layouts.LAYER_MEDIA_TYPES.get(layer.media_type, "any")
        if declared not in ("any", comp):
            # As podman, Docker and containerd do: the content decides (a
            # producer chain such as skopeo --dest-decompress writes plain
            # tars labelled +gzip). The digests are checked all the same.
            LOG.warning("%s: media type %s says %s but the blob is %s; reading it as %s",
                        what, layer.media_type, declared, comp, comp)
        layer.compression = comp
        body = streams.PrefixedReader(head, blob)
        plain = streams.DecompressErrors(streams.decompressor(comp, body), what)
        if comp != "none":
            plain = streams.RatioGuard(plain, blob, img.limits.max_compression_ratio, what,
                                       totals=budget)
        data = limited = streams.LimitedReader(plain, "max_total_bytes", img.limits.max_total_bytes,
                                               "all layers", used=budget.used)
        # A compressed layer's work runs in three threads (both cores): one
        # reads, hashes and decompresses the blob, the next hashes the
        # uncompressed bytes, the last spools them; the caller parses.
        # An uncompressed blob already verified under the same digest needs no second hash.
        same = comp == "none" and layer.digest == layer.diff_id
        threads = []

        def thread(src, name):
            threads.append(streams.Prefetcher(src, name=f"docker2vm-{name}-{layer.index + 1}"))
            return threads[-1]

        ok = False
        try:
            try:
                if comp != "none":
                    data = thread(data, "unpack")
                diff = streams.DigestReader(data, f"{what} uncompressed (diff_id)",
                                            None if same else layer.diff_id)
                source = diff
                if comp != "none":
                    source = streams.TeeReader(thread(diff, "hash"), img.new_spool(layer.index))
                fetch = thread(source, "layer")
                yield self._iterate(fetch, what, empty=not head)
                while fetch.read(streams.CHUNK):
                    pass
            finally:
                for t in reversed(threads):
                    t.close()
                budget.used = limited.count
            blob.drain()
            if comp != "none":
                plain.close()
            blob.verify()
            diff.verify()
            ok = True
        except (tarfile.TarError, EOFError) as exc:
            raise errors.ArchiveError(f"{what}: truncated or corrupt tar: {exc}") from None
        finally:
            if not ok:
                img.drop_spool(layer.index)

    @contextlib.contextmanager
    def content(self, keep=False):
        """After :meth:`members` went through the whole layer: yield
        ``read_at(offset, size)`` giving a reader of ``size`` bytes at
        ``offset`` of the layer's uncompressed tar, from the spool or, for
        an uncompressed blob, from the archive file itself (both hold the
        bytes verified by :meth:`members`). The spool is dropped after,
        unless ``keep``: then it stays (and the readers' ``fd``/``start``
        stay valid) until the image is closed."""
        img, layer = self.image, self.layer
        if layer.compression == "none":
            window = img.outer.open(layer.path)
            fd, base = window.fd, window.start
        else:
            spool = img.spools.get(layer.index)
            if spool is None:
                raise errors.Docker2VMError(f"layer {layer.index + 1}: content read before its members")
            fd, base = spool.fileno(), 0
        ok = False
        try:
            yield lambda offset, size: streams.FileWindow(fd, base + offset, size)
            ok = True
        finally:
            if not (keep and ok):
                img.drop_spool(layer.index)

    @staticmethod
    def _iterate(stream, what, empty):
        if empty:
            return
        yield from layertar.iterate_members(stream)


class Image:
    def __init__(self, outer, candidate, layout, limits, tmpdir=None, tmp_prefix=None):
        self.outer = outer
        self.limits = limits
        self.tmpdir = tmpdir
        self.tmp_prefix = tmp_prefix or "docker2vm-"
        self.spools = {}   # layer index -> anonymous temp file (uncompressed layer tar)
        self.layout = layout
        self.candidate = candidate
        # Read once: verified against the layout's digest when it names one,
        # else its own hash is the image ID (classic docker save by name).
        raw = outer.read_bytes(candidate.config_path, "image config",
                               digest=candidate.config_digest, size=candidate.config_size)
        self.config_document = parse_json(raw, candidate.config_path, "image config")
        config_digest = candidate.config_digest or "sha256:" + hashlib.sha256(raw).hexdigest()
        self.config = ContainerConfig.from_image_config(
            self.config_document, config_digest=config_digest, repo_tags=candidate.tags)
        self.layers = self._layers()

    @property
    def created(self):
        """The config's ``created`` time (RFC 3339 text), or None: what a
        disk's fixed times come from (``build_disk(created=...)``)."""
        created = self.config_document.get("created")
        return created if isinstance(created, str) else None

    def _layers(self):
        rootfs = self.config_document.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" \
                or not isinstance(rootfs.get("diff_ids"), list):
            raise errors.ArchiveError("image config has no rootfs.diff_ids list")
        diff_ids = rootfs["diff_ids"]
        refs = self.candidate.layers
        if len(refs) > self.limits.max_layers:
            raise errors.LimitExceeded("max_layers", len(refs), self.limits.max_layers)
        if len(diff_ids) != len(refs):
            raise errors.ArchiveError(
                f"image config lists {len(diff_ids)} diff_ids but the manifest {len(refs)} layers")
        layers = []
        for i, (ref, diff_id) in enumerate(zip(refs, diff_ids)):
            if not isinstance(diff_id, str) or not layouts._DIGEST.match(diff_id):
                raise errors.ArchiveError(f"image config diff_id {i} is malformed: {diff_id!r}")
            real = self.outer.resolve(ref.path)
            if real is None:
                foreign = "foreign" in ref.media_type or "nondistributable" in ref.media_type
                raise errors.ArchiveError(
                    f"layer {i + 1} ({(ref.digest or diff_id)[:19]}): blob {ref.path} is missing "
                    "from the archive" + (" (a foreign layer, not shipped in archives)" if foreign else ""))
            layers.append(Layer(index=i, path=real, media_type=ref.media_type, digest=ref.digest,
                                diff_id=diff_id, size=self.outer.size(real)
                                if ref.size is None else ref.size))
        return layers

    def readers(self):
        return [LayerReader(self, layer) for layer in self.layers]

    def new_spool(self, index):
        """A new anonymous temporary file (unlinked: nothing is left behind
        even if the process is killed) for layer ``index``; returns its fd."""
        self.drop_spool(index)
        spool = tempfile.TemporaryFile(dir=self.tmpdir, prefix=self.tmp_prefix)
        self.spools[index] = spool
        return spool.fileno()

    def drop_spool(self, index):
        spool = self.spools.pop(index, None)
        if spool is not None:
            spool.close()

    def close(self):
        for index in list(self.spools):
            self.drop_spool(index)

    def flatten(self, out, progress=None):
        """Write the merged root filesystem to ``out`` (binary file object)
        as one PAX tar; returns the in-memory tree (for statistics)."""
        return Flattener(self.readers(), self.limits, progress).write(out)

    def summary(self):
        return {"config": self.config.to_dict(), "layout": self.layout,
                "manifest_digest": self.candidate.manifest_digest,
                "layers": [layer.to_dict() for layer in self.layers]}


@contextlib.contextmanager
def open_image(path, limits=None, image=None, platform=None, tmpdir=None, tmp_prefix=None):
    """Open a ``docker save`` or OCI archive and select one image in it.

    A compressed archive is decompressed into ``tmpdir`` under a name
    starting with ``tmp_prefix``, removed when the context ends."""
    limits = limits or Limits()
    outer = OuterArchive(path, limits, tmpdir=tmpdir, tmp_prefix=tmp_prefix)
    try:
        candidates, layout = layouts.find_candidates(outer)
        chosen = layouts.select(candidates, image=image, platform=platform)
        LOG.info("selected image %s from %s (%s layout)", chosen.describe(), path, layout)
        img = Image(outer, chosen, layout, limits, tmpdir=tmpdir, tmp_prefix=tmp_prefix)
        try:
            yield img
        finally:
            img.close()
    finally:
        outer.close()
