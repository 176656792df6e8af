"""The image property contract shared by the Glance plugin and Nova side.

The Glance import plugin writes these properties on a converted image; the
Nova image handlers read them back. This module is the one definition of
their names and encodings (see doc/source/properties.md):

* lists and objects are JSON text (Glance property values are strings);
* strings are stored as they are; an absent or empty property means the
  image spec's default (e.g. no ``docker_user`` means root).
"""

import json

from docker_rootfs import errors
from docker_rootfs.config import ContainerConfig

CONTRACT_VERSION = "1"

DELIVERY_DISK = "disk"     # Approach 2: ext4-in-qcow2 rootfs disk
DELIVERY_SHARE = "share"   # Approach 1: archive shared into the guest (9p/virtiofs)
DELIVERY_BUNDLE = "bundle"  # Approach 3: self-contained bootable disk (doc/source/bundle.md)
DELIVERIES = (DELIVERY_DISK, DELIVERY_SHARE, DELIVERY_BUNDLE)

# name -> (ContainerConfig attribute, encoding)
CONFIG_PROPERTIES = {
    "docker_entrypoint": ("entrypoint", "json"),
    "docker_cmd": ("cmd", "json"),
    "docker_env": ("env", "json"),
    "docker_workdir": ("working_dir", "str"),
    "docker_user": ("user", "str"),
    "docker_exposed_ports": ("exposed_ports", "json"),
    "docker_volumes": ("volumes", "json"),
    "docker_stop_signal": ("stop_signal", "str"),
    "docker_labels": ("labels", "json"),
    "docker_image_digest": ("config_digest", "str"),
    "docker_repo_tags": ("repo_tags", "json"),
}
DELIVERY = "docker_delivery"
VERSION = "docker_contract_version"

# OCI/Go architecture names -> the names Glance/Nova use (nova.objects.fields.Architecture).
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64", "arm": "armv7l", "386": "i686",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
                 "mips64le": "mips64el"}

ALL_PROPERTIES = tuple(CONFIG_PROPERTIES) + (DELIVERY, VERSION, "architecture", "os_type",
                                             "img_config_drive")


def image_properties(config, delivery=DELIVERY_DISK):
    """Glance properties (all string values) describing ``config``."""
    if delivery not in DELIVERIES:
        raise errors.Docker2VMError(
            f"docker_delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
    props = {DELIVERY: delivery, VERSION: CONTRACT_VERSION}
    for name, (attr, encoding) in CONFIG_PROPERTIES.items():
        value = getattr(config, attr)
        props[name] = json.dumps(value, separators=(",", ":")) if encoding == "json" else value
    arch = ARCHITECTURES.get(config.architecture, config.architecture)
    if arch:
        props["architecture"] = arch
    props["os_type"] = config.os or "linux"
    # The guest reads the container configuration from the config drive.
    props["img_config_drive"] = "mandatory"
    return props


def is_container_image(properties):
    return properties.get(DELIVERY) in DELIVERIES


def config_from_properties(properties):
    """The ContainerConfig that :func:`image_properties` encoded."""
    if not is_container_image(properties):
        raise errors.Docker2VMError("image has no docker_delivery property: not a "
                                    "docker2vm container image")
    kwargs = {}
    for name, (attr, encoding) in CONFIG_PROPERTIES.items():
        raw = properties.get(name)
        if raw in (None, ""):
            continue
        if encoding == "json":
            try:
                raw = json.loads(raw)
            except ValueError:
                raise errors.Docker2VMError(f"image property {name} is not valid JSON") from None
        kwargs[attr] = raw
    inverse = {v: k for k, v in ARCHITECTURES.items()}
    arch = properties.get("architecture", "")
    config = ContainerConfig(**kwargs)
    config.architecture = inverse.get(arch, arch)
    config.os = properties.get("os_type", "linux")
    # Re-validate types through the same parser the archive path uses.
    return ContainerConfig.from_dict(config.to_dict())
