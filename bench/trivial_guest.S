/*
 * trivial_guest.S - the smallest PVH guest: print one line on COM1 and
 * power off through isa-debug-exit. bench/boot.py boots it next to the
 * middlebox guest so that QEMU's own share of the boot time is visible.
 * Linked with unikernel/guest.ld (entry pvh_start, 4-byte aligned note).
 */
        .section .note.pvh, "a", @note
        .balign 4
        .long 4, 4, 18                  /* "Xen", 4-byte address, PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start

        .section .text.boot, "ax", @progbits
        .code32
        .globl pvh_start
pvh_start:
        mov $message, %esi
        mov $0x3f8, %dx
1:      lodsb
        test %al, %al
        jz 2f
        out %al, %dx
        jmp 1b
2:      mov $0xf4, %dx                  /* isa-debug-exit: QEMU exits with status 1 */
        xor %eax, %eax
        out %eax, %dx
3:      hlt
        jmp 3b

        .section .rodata
message:
        .asciz "trivial: hello\r\n"
