"""docker2vm's development cloud: real OpenStack services on 127.0.0.1.

Development tooling only; product code (docker_rootfs, glance_docker_import,
nova_image_handler) never imports it. See devcloud/cloud.py and doc/source/cloud.md.
"""
