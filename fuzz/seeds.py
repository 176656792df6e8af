"""The seed corpus, built at run time (nothing binary is committed).

Sources:

* the real-tool archives of tests/fixtures/build_fixtures.py (podman,
  buildah, skopeo, umoci; built once into the fixture cache, as the test
  suite does) and, when already built, the producer corpus of
  tests/fixtures/build_corpus.py. They are 1-8 MiB each because of the
  busybox base layer, too big to mutate fast, so :func:`shrink_archive`
  rewrites each one with every layer over :data:`BIG` cut down (at most
  :data:`KEEP_MEMBERS` members, file data cut to 64 bytes) and every
  digest, size and diff_id that names a changed blob fixed, leaving the
  tool-written JSON and the small layers byte for byte;
* the hostile layers of tests/core/test_hostile.py (path traversal, link
  escapes, whiteout tricks) and a small gzip bomb, wrapped in archives by
  :func:`fuzz.targets.build_archive`.

Each target gets seeds of its own input format (see fuzz/targets.py).
"""

import bz2
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import tarfile

import zstandard

from docker_rootfs.archive import streams
from fuzz import targets

BIG = 32 * 1024
KEEP_MEMBERS = 40
_HEX = re.compile(rb"[0-9a-f]{64}")
_BLOB_NAME = re.compile(r"^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$")


def _hex(data):
    return hashlib.sha256(data).hexdigest()


def _decompress(blob):
    comp = streams.sniff_compression(blob[:8])
    if comp == "gzip":
        return comp, gzip.decompress(blob)
    if comp == "zstd":
        return comp, zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    if comp == "xz":
        return comp, lzma.decompress(blob)
    if comp == "bzip2":
        return comp, bz2.decompress(blob)
    return comp, blob


def _compress(raw, comp):
    if comp == "xz":
        return lzma.compress(raw)
    if comp == "bzip2":
        return bz2.compress(raw)
    return targets.compress(raw, comp)


def read_members(tar):
    """[(TarInfo, data or None)] of a tar in memory."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isreg() else None
            out.append((m, data))
    return out


def write_members(members, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m, data in members:
            if data is not None:
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def shrink_layer(raw):
    """A layer tar cut down: the first KEEP_MEMBERS members (hard links
    only to kept files), regular file data cut to 64 bytes (sparse files
    become plain ones)."""
    kept, names = [], set()
    for m, data in read_members(raw):
        if len(kept) >= KEEP_MEMBERS:
            break
        if m.islnk() and m.linkname not in names:
            continue
        if m.isreg():
            m.type = tarfile.REGTYPE
            m.sparse = None
            data = data[:64]
        names.add(m.name)
        kept.append((m, data))
    return write_members(kept)


def _is_tar(raw):
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            return tf.next() is not None
    except (tarfile.TarError, EOFError):
        return False


def _fix_sizes(doc, sizes):
    if isinstance(doc, dict):
        d = doc.get("digest")
        if isinstance(d, str) and d[7:] in sizes and isinstance(doc.get("size"), int):
            doc["size"] = sizes[d[7:]]
        for v in doc.values():
            _fix_sizes(v, sizes)
    elif isinstance(doc, list):
        for v in doc:
            _fix_sizes(v, sizes)
    return doc


def shrink_archive(data):
    """An image archive (bytes) with its big layers cut down and every
    reference to a changed blob fixed; None when it is not a tar."""
    comp, plain = _decompress(data)
    if not _is_tar(plain):
        return None
    members = read_members(plain)
    renames = {}
    for i, (m, blob) in enumerate(members):
        if blob is None or len(blob) <= BIG:
            continue
        lcomp, raw = _decompress(blob)
        if not _is_tar(raw):
            continue
        small_raw = shrink_layer(raw)
        small = _compress(small_raw, lcomp)
        renames[_hex(raw)] = _hex(small_raw)
        renames[_hex(blob)] = _hex(small)
        members[i] = (m, small)
    for _ in range(6):   # configs -> manifests -> indexes -> index.json
        # Every blob named by its digest must hash to it again.
        for m, blob in members:
            match = _BLOB_NAME.match(m.name.lstrip("./")) if blob is not None else None
            if match:
                old = match.group(1) or match.group(2)
                if _hex(blob) != old:
                    renames[old] = _hex(blob)
        if not renames:
            break
        sizes = {_hex(b): len(b) for _, b in members if b is not None}
        changed = False
        for i, (m, blob) in enumerate(members):
            name = _HEX.sub(lambda x: renames.get(x.group().decode(), x.group().decode()).encode(),
                            m.name.encode()).decode()
            if name != m.name:
                m.name = name
                changed = True
            if blob is not None and len(blob) <= BIG and blob[:1] in (b"{", b"["):
                new = _HEX.sub(lambda x: renames.get(x.group().decode(), x.group().decode()).encode(),
                               blob)
                try:
                    doc = json.loads(new)
                except ValueError:
                    doc = None
                if doc is not None:
                    fixed = _fix_sizes(json.loads(new), sizes)
                    if fixed != doc:
                        new = json.dumps(fixed, separators=(",", ":")).encode()
                if new != blob:
                    members[i] = (m, new)
                    changed = True
        renames = {}
        if not changed:
            break
    return _compress(write_members(members, tarfile.USTAR_FORMAT), comp)


def _layers_of(archive_bytes):
    """[(mode, uncompressed layer tar)] of an archive's layer blobs, in
    member order (not image order: seeds only)."""
    _, plain = _decompress(archive_bytes)
    out = []
    for m, blob in read_members(plain):
        if blob is None or blob[:1] in (b"{", b"["):
            continue
        comp, raw = _decompress(blob)
        if comp in ("gzip", "zstd", "none") and _is_tar(raw):
            # A small blob of a big tar (zeros) stays compressed, as given.
            out.append(("raw", blob) if len(raw) > 4 * BIG else (comp, raw))
    return out


def layout_seed(archive_bytes):
    """The ``layout`` target's form of a (shrunk) archive: its index.json or
    manifest.json, then its JSON blobs with every digest written as a
    placeholder (see fuzz/targets.py resolve_documents); None if it has
    no such head."""
    _, plain = _decompress(archive_bytes)
    members = {m.name.lstrip("./"): d for m, d in read_members(plain) if d is not None}
    head_name = "manifest.json" if "manifest.json" in members else "index.json"
    if head_name not in members:
        return None
    docs, layers = {}, {}
    for name, data in members.items():
        if name in (head_name, "oci-layout", "repositories") or name.endswith(("/json", "/VERSION")):
            continue
        if data[:1] in (b"{", b"[") and len(data) <= BIG:
            if _BLOB_NAME.match(name):
                docs[_hex(data)] = data
        else:
            layers[name] = data
    subst = {}
    for name, data in layers.items():
        subst[_hex(data)] = b"@L"
        try:
            subst[_hex(_decompress(data)[1])] = b"@D"
        except Exception:
            pass
    order, left = [], dict(docs)
    while left:
        free = [h for h in left if not any(h.encode() in d for o, d in left.items() if o != h)]
        free = free or sorted(left)[:1]
        for h in sorted(free):
            order.append(h)
            del left[h]
    for i, h in enumerate(order):
        subst[h] = b"@%d" % i

    def rewrite(doc):
        for name in layers:
            if not _BLOB_NAME.match(name):
                doc = doc.replace(name.encode(), b"blobs/sha256/@L")
        return _HEX.sub(lambda x: subst.get(x.group().decode(), x.group()), doc)
    return targets.JSON_SEP.join([rewrite(members[head_name])] + [rewrite(docs[h]) for h in order])


def real_archives(log=print):
    """Paths of the real-tool archives (fixtures built if needed)."""
    from tests.fixtures import build_corpus, build_fixtures
    top, index = build_fixtures.ensure_fixtures(log=log)
    paths = [os.path.join(top, fx["archive"]) for fx in index["fixtures"].values()]
    # The producer corpus of the current build_corpus.py, else the newest
    # one built (real-tool archives all the same): never built here.
    built = sorted(glob.glob(os.path.join(build_fixtures.cache_root(), "corpus-producers-*", "archives")),
                   key=os.path.getmtime)
    current = os.path.join(build_fixtures.cache_root(), f"corpus-producers-{build_corpus.cache_key()}",
                           "archives")
    producers = current if os.path.isdir(current) else (built[-1] if built else None)
    if producers:
        paths += sorted(os.path.join(producers, n) for n in os.listdir(producers))
    return sorted(p for p in paths if os.path.isfile(p))


def hostile_layer_sets():
    """{name: [layer tar bytes]} of the hostile cases of the test suite."""
    from tests.core import test_hostile as th
    sets = {}
    for case in sorted(set(th.CONTAIN_CASES) | set(th.REFUSE_CASES)):
        sets[case] = th._layers_for(case, "tmp/docker2vm-fuzz-sentinel")
    return sets


def build(outdir, log=print, archives=None):
    """Write the seeds of every target into ``outdir/<target>/``; returns
    {target: count}."""
    dirs = {t: os.path.join(outdir, t) for t in targets.TARGETS}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    def put(target, name, data):
        with open(os.path.join(dirs[target], name), "wb") as f:
            f.write(data)

    sandbox = targets.Sandbox()
    try:
        for path in archives if archives is not None else real_archives(log):
            name = os.path.basename(path).split(".")[0]
            with open(path, "rb") as f:
                data = f.read()
            small = shrink_archive(data)
            if small is None:
                continue
            for t in ("archive", "archive-unverified"):
                put(t, "real-" + name, small)
            layout = layout_seed(small)
            if layout:
                put("layout", "real-" + name, layout)
            layers = _layers_of(small)
            if layers:
                put("layers", "real-" + name, targets.join_layers(layers, docker_save=False))
            try:
                targets.convert(sandbox.write_input(small), sandbox)
            except Exception as exc:   # a seed the reader refuses is still a seed
                log(f"seed {name}: the shrunk archive does not flatten: {exc}")
            else:
                with open(sandbox.out, "rb") as f:
                    flat = f.read()
                put("tarscan", "flat-" + name, flat)
                put("build", "flat-" + name, flat)
        for case, tars in hostile_layer_sets().items():
            put("layers", "hostile-" + case, targets.join_layers([("none", t) for t in tars]))
            put("layers", "hostile-gz-" + case,
                targets.join_layers([("gzip", t) for t in tars], docker_save=True))
            arch = targets.build_archive([("none", t) for t in tars])
            put("layout", "hostile-" + case, layout_seed(arch))
            put("layout", "hostile-ds-" + case,
                layout_seed(targets.build_archive([("gzip", t) for t in tars], docker_save=True)))
            put("archive", "hostile-" + case, arch)
            put("archive-unverified", "hostile-" + case, arch)
            for i, t in enumerate(tars):
                put("tarscan", f"hostile-{case}-{i}", t)
                put("build", f"hostile-{case}-{i}", t)
        from tests.core import test_hostile as th
        bomb, _ = th.gzip_bomb(2)
        put("layers", "gzip-bomb", targets.join_layers([("raw", bomb)]))
        put("archive", "gzip-bomb", targets.build_archive([("raw", bomb)]))
    finally:
        sandbox.close()
    return {t: len(os.listdir(d)) for t, d in dirs.items()}
