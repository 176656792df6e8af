"""Find the images inside an outer archive: ``docker save`` (classic and
Docker 25+ layouts, both described by ``manifest.json``) and OCI image
layouts (``index.json``, nested indexes). Produces :class:`Candidate`
objects and selects one by tag, digest and platform.
"""

import dataclasses
import platform as host_platform
import re

from docker_rootfs import errors

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# Layer media types and the compression each names ("any": decided by magic).
LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "any",  # Docker uses it for all
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "any",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_HEX_DIGEST = re.compile(r"(?:^|/)(?:sha256/)?([0-9a-f]{64})(?:\.json)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_INDEX_DEPTH = 4

ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm",
                "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform_string():
    machine = host_platform.machine()
    return "linux/" + ARCH_ALIASES.get(machine, machine)


@dataclasses.dataclass
class LayerRef:
    path: str               # member name in the outer archive
    media_type: str         # "" when the layout does not say
    digest: str | None      # blob digest, when the layout names one
    size: int | None        # blob size, when the layout names one


@dataclasses.dataclass
class Candidate:
    """One image in the archive, before its config is read."""
    tags: list
    config_path: str
    config_digest: str | None
    config_size: int | None
    layers: list
    manifest_digest: str | None = None
    platform: dict | None = None   # {"os", "architecture", "variant"} from an index

    def platform_string(self):
        if not self.platform:
            return None
        p = self.platform
        s = f"{p.get('os', '')}/{p.get('architecture', '')}"
        if p.get("variant"):
            s += "/" + p["variant"]
        return s

    def describe(self):
        bits = []
        if self.tags:
            bits.append(",".join(self.tags))
        bits.append((self.manifest_digest or self.config_digest or self.config_path)[:19])
        if self.platform:
            bits.append(self.platform_string())
        return " ".join(bits)


def _digest_from_path(path):
    m = _HEX_DIGEST.search(path)
    return "sha256:" + m.group(1) if m else None


def _blob_path(digest, what):
    if not isinstance(digest, str) or ":" not in digest:
        raise errors.ArchiveError(f"{what}: malformed digest {digest!r}")
    alg, _, hexpart = digest.partition(":")
    if alg != "sha256" or not _DIGEST.match(digest):
        raise errors.ArchiveError(f"{what}: unsupported or malformed digest {digest!r}")
    return f"blobs/{alg}/{hexpart}"


def _descriptor(d, what):
    if not isinstance(d, dict) or "digest" not in d:
        raise errors.ArchiveError(f"{what}: malformed descriptor")
    size = d.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise errors.ArchiveError(f"{what}: malformed size {size!r}")
    _blob_path(d["digest"], what)
    return d


# -- docker save ----------------------------------------------------------

def docker_save_candidates(outer):
    doc = outer.read_json("manifest.json", "docker save manifest.json")
    if not isinstance(doc, list) or not doc:
        raise errors.ArchiveError("docker save manifest.json is not a non-empty list")
    out = []
    for i, entry in enumerate(doc):
        what = f"manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise errors.ArchiveError(f"{what}: needs Config and Layers")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise errors.ArchiveError(f"{what}: RepoTags is not a list of strings")
        sources = entry.get("LayerSources") or {}
        if not isinstance(sources, dict):   # (found by fuzzing, as the checks below)
            raise errors.ArchiveError(f"{what}: LayerSources is not an object")
        layers = []
        for path in entry["Layers"]:
            if not isinstance(path, str):
                raise errors.ArchiveError(f"{what}: layer path is not a string")
            digest = _digest_from_path(path) if path.startswith("blobs/") else None
            src = sources.get(digest, {}) if digest else {}
            if not isinstance(src, dict) or not isinstance(src.get("mediaType", ""), str):
                raise errors.ArchiveError(f"{what}: LayerSources entry of {path} is malformed")
            if src.get("size") is not None and (not isinstance(src["size"], int) or src["size"] < 0):
                raise errors.ArchiveError(f"{what}: malformed size {src['size']!r}")
            layers.append(LayerRef(path=path, media_type=src.get("mediaType", ""),
                                   digest=digest, size=src.get("size")))
        config = entry["Config"]
        out.append(Candidate(tags=list(tags), config_path=config,
                             config_digest=_digest_from_path(config), config_size=None,
                             layers=layers))
    return out


# -- OCI layout -------------------------------------------------------------

def oci_candidates(outer):
    if outer.exists("oci-layout"):
        layout = outer.read_json("oci-layout", "oci-layout file")
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != "1.0.0":
            raise errors.ArchiveError(f"unsupported OCI imageLayoutVersion {version!r}")
    index = outer.read_json("index.json", "OCI index.json")
    out = []
    _walk_index(outer, index, "index.json", [], None, out, 0)
    return out


def _walk_index(outer, index, what, tags, platform, out, depth):
    if depth > MAX_INDEX_DEPTH:
        raise errors.ArchiveError(f"{what}: image indexes nested too deeply")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise errors.ArchiveError(f"{what}: has no manifests list")
    for i, d in enumerate(index["manifests"]):
        dwhat = f"{what} manifests[{i}]"
        _descriptor(d, dwhat)
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict):   # (found by fuzzing, as the platform check)
            raise errors.ArchiveError(f"{dwhat}: annotations is not an object")
        dtags = list(tags)
        for key in (CONTAINERD_NAME, REF_NAME):
            if isinstance(ann.get(key), str) and ann[key] not in dtags:
                dtags.append(ann[key])
        dplat = d.get("platform") if isinstance(d.get("platform"), dict) else platform
        if dplat and not all(isinstance(dplat.get(k), (str, type(None))) for k in ("os", "architecture", "variant")):
            raise errors.ArchiveError(f"{dwhat}: platform os/architecture/variant are not strings")
        mt = d.get("mediaType", "")
        path = _blob_path(d["digest"], dwhat)
        if mt in (OCI_INDEX, DOCKER_LIST):
            sub = outer.read_json(path, f"image index {d['digest'][:19]}",
                                  digest=d["digest"], size=d.get("size"))
            _walk_index(outer, sub, f"image index {d['digest'][:19]}", dtags, dplat, out, depth + 1)
        elif mt in (OCI_MANIFEST, DOCKER_MANIFEST, ""):
            if dplat and dplat.get("os") == "unknown":
                continue  # attestation/signature manifests (BuildKit), not images
            out.append(_manifest_candidate(outer, d, dtags, dplat))
        # other media types (artifacts) are not images: skipped


def _manifest_candidate(outer, desc, tags, platform):
    what = f"image manifest {desc['digest'][:19]}"
    m = outer.read_json(_blob_path(desc["digest"], what), what,
                        digest=desc["digest"], size=desc.get("size"))
    if not isinstance(m, dict):
        raise errors.ArchiveError(f"{what} is not a JSON object")
    mt = m.get("mediaType") or desc.get("mediaType") or OCI_MANIFEST
    if mt not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise errors.UnsupportedMediaType(f"{what}: media type {mt} is not an image manifest")
    cfg = _descriptor(m.get("config"), f"{what} config")
    if cfg.get("mediaType") not in (OCI_CONFIG, DOCKER_CONFIG):
        raise errors.UnsupportedMediaType(
            f"{what}: config media type {cfg.get('mediaType')!r} is not an image config "
            "(an artifact, not a container image?)")
    if not isinstance(m.get("layers"), list):
        raise errors.ArchiveError(f"{what}: has no layers list")
    layers = []
    for i, ld in enumerate(m["layers"]):
        lwhat = f"{what} layer {i}"
        _descriptor(ld, lwhat)
        lmt = ld.get("mediaType", "")
        if not isinstance(lmt, str) or lmt not in LAYER_MEDIA_TYPES:   # a list: found by fuzzing
            raise errors.UnsupportedMediaType(f"{lwhat}: unsupported media type {lmt!r}")
        layers.append(LayerRef(path=_blob_path(ld["digest"], lwhat), media_type=lmt,
                               digest=ld["digest"], size=ld.get("size")))
    return Candidate(tags=tags, config_path=_blob_path(cfg["digest"], what),
                     config_digest=cfg["digest"], config_size=cfg.get("size"),
                     layers=layers, manifest_digest=desc["digest"], platform=platform)


def find_candidates(outer):
    if outer.exists("manifest.json"):
        return docker_save_candidates(outer), "docker-save"
    if outer.exists("index.json"):
        return oci_candidates(outer), "oci"
    raise errors.ArchiveError(
        "not a docker save or OCI image archive: no manifest.json or index.json in it")


# -- selection -----------------------------------------------------------------

def _normalise_tag(tag):
    t = tag
    for prefix in ("docker.io/library/", "docker.io/", "localhost/", "library/"):
        if t.startswith(prefix):
            t = t[len(prefix):]
            break
    last = t.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        t += ":latest"
    return t


def _matches_image(c, selector):
    if selector.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{12,64}", selector):
        want = selector if selector.startswith("sha256:") else "sha256:" + selector
        return any(d and d.startswith(want) for d in (c.config_digest, c.manifest_digest))
    want = _normalise_tag(selector)
    return any(t == selector or _normalise_tag(t) == want for t in c.tags)


def parse_platform(text):
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise errors.ImageSelectionError(
            f"platform {text!r} is not of the form os/arch[/variant]")
    return {"os": parts[0], "architecture": ARCH_ALIASES.get(parts[1], parts[1]),
            "variant": parts[2] if len(parts) == 3 else None}


def platform_matches(have, want):
    if have.get("os") != want["os"] or have.get("architecture") != want["architecture"]:
        return False
    return want["variant"] is None or have.get("variant") == want["variant"]


def select(candidates, image=None, platform=None):
    """Pick one candidate; a clear ImageSelectionError lists the choices."""
    if not candidates:   # an index of artifacts or of nothing (found by fuzzing)
        raise errors.ImageSelectionError("the archive holds no container image")
    pool = candidates
    if image:
        pool = [c for c in pool if _matches_image(c, image)]
        if not pool:
            raise errors.ImageSelectionError(
                f"no image {image!r} in the archive; it has: "
                + "; ".join(c.describe() for c in candidates))
    with_platform = [c for c in pool if c.platform]
    if with_platform and (len(pool) > 1 or platform):
        want = parse_platform(platform or host_platform_string())
        matching = [c for c in with_platform if platform_matches(c.platform, want)]
        if not matching:
            raise errors.ImageSelectionError(
                f"platform {platform or host_platform_string()} is not in the archive; "
                "it has: " + ", ".join(sorted({c.platform_string() for c in with_platform})))
        pool = matching
    if len(pool) > 1:
        raise errors.ImageSelectionError(
            "the archive holds several images; choose one by tag or digest: "
            + "; ".join(c.describe() for c in pool))
    return pool[0]
