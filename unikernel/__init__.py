"""The guest: builds a graph's plan into a bootable PVH image and launches
it under QEMU (issue 6). The freestanding runtime C files live beside this.
"""
