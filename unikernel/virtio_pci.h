/*
 * virtio_pci.h - the virtio-pci transport, modern interface (virtio 1.x
 * section 4.1), for PC machines such as QEMU's q35. Its operations are
 * struct vdev_ops (virtio.h); the driver talks to a device through the
 * struct vdev that begins struct vpci.
 *
 * Devices are found by walking PCI configuration space through the legacy
 * mechanism (I/O ports 0xcf8/0xcfc): bus 0, and the buses behind bridges
 * the firmware has numbered. A virtio device qualifies with vendor 0x1af4
 * and a modern device ID (0x1040 + type, e.g. 0x1041 for a NIC), or a
 * transitional one (0x1000-0x103f, its type in the subsystem ID) that has
 * the modern capabilities: it is driven as modern either way. Its memory
 * BARs are kept where the firmware put them (mapped if above 4 GiB), or
 * given addresses by the guest when the firmware left them unassigned
 * (qboot does), from 0xc0000000 (above q35's MMCONFIG window) up.
 *
 * Devices are listed in ascending bus:device.function order: the launcher
 * puts NIC k in slot 2 + k of bus 0.
 */
#ifndef UK_VIRTIO_PCI_H
#define UK_VIRTIO_PCI_H

#include <stdint.h>

#include "virtio.h"

struct vpci {
    struct vdev v;              /* first: the driver's view */
    uint8_t bus, dev, fn;
    uintptr_t common;           /* struct virtio_pci_common_cfg */
    uintptr_t notify;           /* notification area */
    uint32_t notify_len;
    uint32_t notify_mult;       /* notify_off_multiplier */
    uintptr_t isr;
    uintptr_t device;           /* device-specific configuration */
    uint32_t device_len;
};

/* 1 when configuration space answers (a host bridge at 00:00.0). */
int pci_present(void);

/* Find up to max modern virtio devices (any type); returns how many, in
 * ascending bus:device.function order. Devices that cannot be driven
 * (no modern interface, BARs the guest cannot reach) are reported on the
 * console and left out. */
uint32_t vpci_discover(struct vpci *out, uint32_t max);

#endif
