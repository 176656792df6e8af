"""Nova side of docker2vm: a libvirt driver booting docker images as one VM each.

``compute_driver = docker2vm.Docker2VMDriver`` (shim: ``nova/virt/docker2vm``)
loads :class:`nova_image_handler.driver.Docker2VMDriver`. Per instance, the
image's ``docker_delivery`` (read from the image API) picks a handler from
the stevedore namespace ``docker2vm.nova.handlers``: ``disk`` (Approach 2:
the Glance rootfs qcow2 is Nova's root disk, attached with the serial the
guest looks for) or ``share`` (Approach 1: the archive unpacked once per
host, exported read-only by virtiofs or 9p). See doc/source/nova.md.

The domain XML changes are plain functions in :mod:`nova_image_handler.guestxml`
(:func:`~nova_image_handler.guestxml.domain_xml` builds a whole domain
without a running Nova).
"""
