"""docker_rootfs: the OpenStack-free core of docker2vm.

Data flows one way: archive (``archive/``) -> flattened tree (``flatten``)
-> disk (``disk/``) -> image properties (``properties``) -> guest (``guest/``).
Nothing in this package imports OpenStack code.
"""
