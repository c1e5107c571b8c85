"""corral.kvm: virtual machines through libvirt/QEMU."""

import os

# libvirt reads its log settings once, when first loaded: keep its info and
# warning lines (taint notices, probes of absent device-mapper) off stderr.
os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "4:stderr")
