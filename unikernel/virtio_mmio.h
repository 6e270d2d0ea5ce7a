/*
 * virtio_mmio.h - the virtio-mmio transport: the virtio 1.x "version 2"
 * registers, and the legacy "version 1" layout QEMU shows by default.
 * Its operations are struct vdev_ops (virtio.h); the driver talks to a
 * device through the struct vdev that begins struct vmmio.
 *
 * Devices are found on the kernel command line the way QEMU microvm and
 * Firecracker describe them (virtio_mmio.device=<size>@<base>:<irq>),
 * else, on a machine without PCI, by probing microvm's fixed windows
 * (0xfeb00000 + 0x200 * n). They are listed in ascending address order:
 * the launcher places NIC k in the k-th window.
 */
#ifndef UK_VIRTIO_MMIO_H
#define UK_VIRTIO_MMIO_H

#include <stdint.h>

#include "virtio.h"

struct vmmio {
    struct vdev v;              /* first: the driver's view */
    uintptr_t base;
    uint32_t version;           /* 2 modern, 1 legacy */
};

/* Find up to max devices (any type); returns how many, ascending address.
 * probe_windows: when the command line names none, look in microvm's
 * fixed windows (not on a PC, where that address may be a PCI BAR). */
uint32_t vmmio_discover(struct vmmio *out, uint32_t max, int probe_windows);

#endif
