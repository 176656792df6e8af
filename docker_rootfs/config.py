"""The container's run configuration, as the OCI image spec defines it.

:class:`ContainerConfig` holds what ``docker run`` takes from an image
config blob, with the spec's defaults applied when fields are absent.
Shell-form ``CMD foo`` is already stored by builders as
``["/bin/sh", "-c", "foo"]``; nothing here re-parses strings.
"""

import dataclasses
import json

from docker_rootfs import errors

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_SIGNAL = "SIGTERM"


def _str_list(value, field):
    if value is None:
        return []
    if isinstance(value, str):
        # Some old builders stored a bare string; Docker treats it as one arg.
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.ArchiveError(f"image config field {field} is not a list of strings")
    return list(value)


def _str_map(value, field):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise errors.ArchiveError(f"image config field {field} is not an object")
    return value


def _str(value, field):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.ArchiveError(f"image config field {field} is not a string")
    return value


@dataclasses.dataclass
class ContainerConfig:
    entrypoint: list = dataclasses.field(default_factory=list)
    cmd: list = dataclasses.field(default_factory=list)
    env: list = dataclasses.field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    exposed_ports: list = dataclasses.field(default_factory=list)
    volumes: list = dataclasses.field(default_factory=list)
    stop_signal: str = ""
    labels: dict = dataclasses.field(default_factory=dict)
    architecture: str = ""
    os: str = ""
    variant: str = ""
    config_digest: str = ""
    repo_tags: list = dataclasses.field(default_factory=list)

    # Fields serialised under their OCI names, in the spec's order.
    _OCI_NAMES = (
        ("entrypoint", "Entrypoint"), ("cmd", "Cmd"), ("env", "Env"),
        ("working_dir", "WorkingDir"), ("user", "User"),
        ("exposed_ports", "ExposedPorts"), ("volumes", "Volumes"),
        ("stop_signal", "StopSignal"), ("labels", "Labels"),
    )

    @classmethod
    def from_image_config(cls, doc, config_digest="", repo_tags=()):
        """Build from a parsed image config JSON document (OCI or Docker)."""
        if not isinstance(doc, dict):
            raise errors.ArchiveError("image config is not a JSON object")
        c = doc.get("config")
        if c is None:
            c = {}
        if not isinstance(c, dict):
            raise errors.ArchiveError("image config field config is not an object")
        labels = _str_map(c.get("Labels"), "Labels")
        if not all(isinstance(v, str) for v in labels.values()):
            raise errors.ArchiveError("image config field Labels has non-string values")
        for item in _str_list(c.get("Env"), "Env"):
            if "=" not in item:
                raise errors.ArchiveError(f"image config Env entry {item!r} has no '='")
        return cls(
            entrypoint=_str_list(c.get("Entrypoint"), "Entrypoint"),
            cmd=_str_list(c.get("Cmd"), "Cmd"),
            env=_str_list(c.get("Env"), "Env"),
            working_dir=_str(c.get("WorkingDir"), "WorkingDir"),
            user=_str(c.get("User"), "User"),
            exposed_ports=sorted(_str_map(c.get("ExposedPorts"), "ExposedPorts")),
            volumes=sorted(_str_map(c.get("Volumes"), "Volumes")),
            stop_signal=_str(c.get("StopSignal"), "StopSignal"),
            labels=dict(labels),
            architecture=_str(doc.get("architecture"), "architecture"),
            os=_str(doc.get("os"), "os"),
            variant=_str(doc.get("variant"), "variant"),
            config_digest=config_digest,
            repo_tags=list(repo_tags),
        )

    # -- docker run semantics -------------------------------------------
    def argv(self, cmd=None, entrypoint=None):
        """The command ``docker run [--entrypoint E] IMAGE [CMD...]`` runs.

        ``entrypoint`` given (even empty) replaces the image's Entrypoint and
        drops the image's Cmd, as ``docker run --entrypoint`` does; ``cmd``
        given replaces Cmd.
        """
        ep = list(self.entrypoint) if entrypoint is None else list(entrypoint)
        if cmd is not None:
            args = list(cmd)
        elif entrypoint is not None:
            args = []
        else:
            args = list(self.cmd)
        return ep + args

    def environment(self, overrides=()):
        """Image Env with ``KEY=VALUE`` overrides applied, PATH defaulted."""
        env = {}
        for item in list(self.env) + list(overrides):
            key, _, value = item.partition("=")
            env[key] = value
        env.setdefault("PATH", DEFAULT_PATH)
        return [f"{k}={v}" for k, v in env.items()]

    @property
    def effective_stop_signal(self):
        return self.stop_signal or DEFAULT_STOP_SIGNAL

    @property
    def effective_working_dir(self):
        return self.working_dir or "/"

    @property
    def platform(self):
        parts = [self.os or "linux", self.architecture or "unknown"]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    # -- JSON form (OCI field names) --------------------------------------
    def to_dict(self):
        d = {oci: getattr(self, attr) for attr, oci in self._OCI_NAMES}
        # OCI stores ports and volumes as objects with empty values.
        d["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        d["Volumes"] = {v: {} for v in self.volumes}
        d["architecture"] = self.architecture
        d["os"] = self.os
        if self.variant:
            d["variant"] = self.variant
        d["config_digest"] = self.config_digest
        d["RepoTags"] = list(self.repo_tags)
        return d

    def to_json(self, **kw):
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d):
        doc = {"config": {oci: d.get(oci) for _, oci in cls._OCI_NAMES},
               "architecture": d.get("architecture"), "os": d.get("os"),
               "variant": d.get("variant")}
        return cls.from_image_config(doc, d.get("config_digest", ""),
                                     d.get("RepoTags") or ())
