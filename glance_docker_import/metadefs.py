"""The Glance metadata-definitions namespace describing the property contract.

``python -m glance_docker_import.metadefs > etc/metadefs/docker2vm-container.json``
regenerates the file; load it with
``glance-manage db_load_metadefs /path/to/dir`` so Horizon shows the
properties. Names come from :mod:`docker_rootfs.properties` (the contract);
this module adds only titles and descriptions.
"""

import json
import sys

from docker_rootfs import properties as contract
from glance_docker_import import MARKER_PROPERTY, METHOD_NAME

NAMESPACE = "OS::Glance::Docker2VM"

_JSON_LIST = "JSON list of strings"
DESCRIPTIONS = {
    contract.DELIVERY: (
        "Container delivery",
        "How the container's root filesystem reaches its VM: 'disk' (the "
        "image is an ext4 root filesystem in qcow2), 'share' (the image is "
        "a one-layer docker archive shared into the guest over 9p/virtiofs) "
        "or 'bundle' (the image is a bootable qcow2 holding kernel, init and "
        "root filesystem, for stock Nova). "
        "Set it when importing with the docker-convert method."),
    contract.VERSION: (
        "Property contract version",
        "Version of the docker_* property encoding written by the "
        "docker-convert import."),
    "docker_entrypoint": ("Entrypoint", "Image ENTRYPOINT, " + _JSON_LIST + "."),
    "docker_cmd": ("Command", "Image CMD, " + _JSON_LIST + "."),
    "docker_env": ("Environment", "Image ENV, JSON list of KEY=VALUE strings."),
    "docker_workdir": ("Working directory", "Image WORKDIR; empty means /."),
    "docker_user": ("User", "Image USER (name, uid, uid:gid or name:group); "
                            "empty means root."),
    "docker_exposed_ports": ("Exposed ports",
                             "Image EXPOSE, JSON list such as [\"80/tcp\"]."),
    "docker_volumes": ("Volumes", "Image VOLUME paths, " + _JSON_LIST + "."),
    "docker_stop_signal": ("Stop signal",
                           "Image STOPSIGNAL; empty means SIGTERM."),
    "docker_labels": ("Labels", "Image LABELs, JSON object."),
    "docker_image_digest": ("Image digest",
                            "Digest of the uploaded image's config (its image "
                            "ID), sha256:..."),
    "docker_repo_tags": ("Repository tags",
                         "Tags the uploaded archive gave the image, "
                         + _JSON_LIST + "."),
}


def namespace():
    props = {}
    for name in (contract.DELIVERY, contract.VERSION,
                 *contract.CONFIG_PROPERTIES):
        title, description = DESCRIPTIONS[name]
        prop = {"title": title, "description": description, "type": "string"}
        if name == contract.DELIVERY:
            prop["enum"] = list(contract.DELIVERIES)
        props[name] = prop
    props[MARKER_PROPERTY] = {
        "title": "Import method request",
        "description": "Set to '%s' before a web-download import (clients "
                       "that send a URI only with web-download) to have the "
                       "archive converted; removed once converted."
                       % METHOD_NAME,
        "type": "string",
        "enum": [METHOD_NAME],
    }
    return {
        "namespace": NAMESPACE,
        "display_name": "Docker/OCI container (docker2vm)",
        "description": "Run configuration of a container image imported with "
                       "the docker-convert import method, one container per "
                       "VM. Written by the import; edit with care.",
        "visibility": "public",
        "protected": True,
        "resource_type_associations": [{"name": "OS::Glance::Image"}],
        "properties": props,
    }


def main():
    json.dump(namespace(), sys.stdout, indent=4)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
