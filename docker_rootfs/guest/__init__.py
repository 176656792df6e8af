"""The guest side: base VM (kernel + initramfs, boot disk), its init, and
the host-side rendering of what the guest is told (doc/source/guest-contract.md)."""
