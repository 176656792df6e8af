"""Glance interoperable-import plugin ``docker-convert``.

The plugin (:mod:`glance_docker_import.plugin`) turns a staged ``docker save``
or OCI archive into a bootable rootfs image (``docker_delivery=disk``) or a
validated single-layer archive (``docker_delivery=share``). The paste filter
(:mod:`glance_docker_import.paste_filter`) exposes the ``docker-convert``
import method name that Glance itself cannot register. See doc/source/glance.md.
"""

METHOD_NAME = "docker-convert"
# Key the paste filter adds inside the import request's ``method`` object;
# the plugin acts only when it (or the image property below) is present.
MARKER_KEY = "docker_convert"
# Image property a tenant may set instead, for clients that only send a
# ``uri`` with ``web-download`` (python-glanceclient, openstacksdk).
MARKER_PROPERTY = "docker_import_method"
