"""What one instance's container is: read once from the image API, kept
beside the instance.

:func:`from_image_properties` validates the ``docker_*`` properties (the
contract in doc/source/properties.md, parsed by the shared core) into a
:class:`ContainerSpec`, or raises :class:`~nova_image_handler.errors.ImageError`
naming the property. The driver reads the properties from the image API
(full values; ``instance.system_metadata`` cuts them at 255 characters)
at spawn and saves them as ``<instance dir>/docker2vm.json``, so hard
reboot and power-on rebuild the same XML without Glance, and the file goes
with the instance directory on delete and rebuild.
"""

import dataclasses
import json
import os

from docker_rootfs import errors as core_errors
from docker_rootfs import properties as contract
from nova_image_handler import errors

STATE_FILE = "docker2vm.json"


@dataclasses.dataclass
class ContainerSpec:
    image_id: str
    delivery: str
    properties: dict          # the image's properties (strings), docker_* and the rest
    config: object = None     # docker_rootfs.config.ContainerConfig

    def to_json(self):
        return json.dumps({"image_id": self.image_id, "delivery": self.delivery,
                           "properties": self.properties}, sort_keys=True)


def is_container_image(properties):
    """True when the image carries the docker2vm contract (a docker_delivery property,
    even an empty or wrong one: those are errors, not plain images). A bundle
    (Approach 3, doc/source/bundle.md) is a self-contained bootable disk: it boots
    the stock way, like any plain image."""
    props = properties or {}
    return contract.DELIVERY in props and props[contract.DELIVERY] != contract.DELIVERY_BUNDLE


def from_image_properties(image_id, properties, default_delivery="disk"):
    """The validated spec of a container image; ImageError names what is wrong."""
    props = {k: v for k, v in (properties or {}).items() if isinstance(v, str)}
    delivery = props.get(contract.DELIVERY) or default_delivery
    if delivery not in contract.DELIVERIES:
        raise errors.ImageError(
            image_id=image_id,
            reason=f"image property {contract.DELIVERY}={delivery!r} is not one of "
                   f"{', '.join(contract.DELIVERIES)}")
    version = props.get(contract.VERSION, contract.CONTRACT_VERSION)
    if version != contract.CONTRACT_VERSION:
        raise errors.ImageError(
            image_id=image_id,
            reason=f"image property {contract.VERSION}={version!r}: this host understands "
                   f"version {contract.CONTRACT_VERSION}")
    try:
        config = contract.config_from_properties(dict(props, **{contract.DELIVERY: delivery}))
    except core_errors.Docker2VMError as exc:
        raise errors.ImageError(image_id=image_id, reason=str(exc)) from None
    return ContainerSpec(image_id=image_id, delivery=delivery, properties=props, config=config)


def save(instance_dir, spec):
    path = os.path.join(instance_dir, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(spec.to_json())
    os.replace(tmp, path)
    return path


def load(instance_dir, default_delivery="disk"):
    """The spec saved at spawn, or None (a plain instance, or one spawned before)."""
    try:
        with open(os.path.join(instance_dir, STATE_FILE)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return from_image_properties(data["image_id"], data["properties"], default_delivery)
