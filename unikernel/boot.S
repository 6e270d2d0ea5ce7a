/*
 * boot.S - PVH entry: the loader (QEMU, Firecracker, Xen) jumps to
 * pvh_start in 32-bit protected mode, paging off, %ebx = physical address
 * of struct hvm_start_info. We read the TSC first (the boot clock starts
 * here), clear .bss, identity-map the first 4 GiB with 2 MiB pages (RAM
 * and the MMIO windows of virtio and the local APIC), enter long mode,
 * enable SSE and call guest_main(start_info) on our own stack.
 *
 * Also here: the 32 CPU exception entry points, which hand the vector,
 * error code and faulting address to uk_fault() (platform.c).
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define CR0_PE 0x00000001
#define CR0_MP 0x00000002
#define CR0_EM 0x00000004
#define CR0_NE 0x00000020
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define CR4_OSFXSR 0x00000200
#define CR4_OSXMMEXCPT 0x00000400
#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_PS 0x080
#define STACK_SIZE 65536

/* The PVH note. It must sit in a 4-byte aligned PT_NOTE segment (the
 * linker script makes one): QEMU pads the note name to the segment's
 * alignment when it looks for the entry address. */
        .section .note.pvh, "a", @note
        .balign 4
        .long 4                         /* name size: "Xen\0" */
        .long 4                         /* descriptor size */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long pvh_start

        .section .text.boot, "ax", @progbits
        .code32
        .globl pvh_start
pvh_start:
        cli
        cld
        rdtsc                           /* boot clock: %edx:%eax, kept in %esi:%ebp */
        mov %eax, %ebp
        mov %edx, %esi

        /* Clear .bss (the ELF loader should have; be sure). */
        mov $__bss_start, %edi
        mov $__bss_end, %ecx
        sub %edi, %ecx
        shr $2, %ecx
        xor %eax, %eax
        rep stosl

        mov %ebp, boot_tsc
        mov %esi, boot_tsc + 4
        mov %ebx, start_info_pa

        lgdt gdt_ptr

        /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories. */
        mov $pdpt, %eax
        or $(PTE_P | PTE_W), %eax
        mov %eax, pml4
        mov $pd, %eax
        or $(PTE_P | PTE_W), %eax
        mov $pdpt, %edi
        mov $4, %ecx
1:      mov %eax, (%edi)
        add $4096, %eax
        add $8, %edi
        loop 1b
        /* 2048 entries of 2 MiB each: 0..4 GiB, identity. */
        mov $pd, %edi
        mov $(PTE_P | PTE_W | PTE_PS), %eax
        xor %edx, %edx
        mov $2048, %ecx
2:      mov %eax, (%edi)
        mov %edx, 4(%edi)
        add $0x200000, %eax
        adc $0, %edx
        add $8, %edi
        loop 2b

        mov %cr4, %eax
        or $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $MSR_EFER, %ecx
        rdmsr
        or $EFER_LME, %eax
        wrmsr
        mov %cr0, %eax
        and $~CR0_EM, %eax
        or $(CR0_PE | CR0_MP | CR0_NE | CR0_PG), %eax
        mov %eax, %cr0
        ljmp $0x08, $long_mode

        .code64
long_mode:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        xor %eax, %eax
        mov %ax, %fs
        mov %ax, %gs
        lea stack_top(%rip), %rsp
        xor %ebp, %ebp
        mov start_info_pa(%rip), %edi
        call guest_main
3:      hlt
        jmp 3b

/* --- CPU exceptions ------------------------------------------------------- */

/* Vectors that push an error code: 8, 10-14, 17, 21, 29, 30. */
.macro vec n
        .balign 16
vec_\n:
        .if !(\n == 8 || (\n >= 10 && \n <= 14) || \n == 17 || \n == 21 || \n == 29 || \n == 30)
        push $0
        .endif
        push $\n
        jmp fault_common
.endm

        .text
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vec \n
        .endr

fault_common:
        mov (%rsp), %rdi                /* vector */
        mov 8(%rsp), %rsi               /* error code */
        mov 16(%rsp), %rdx              /* faulting instruction */
        mov %cr2, %rcx                  /* page fault address */
        and $-16, %rsp
        call uk_fault
4:      hlt
        jmp 4b

        .section .rodata
        .balign 8
        .globl uk_vectors
uk_vectors:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad vec_\n
        .endr

        .balign 8
gdt:
        .quad 0                         /* null */
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_ptr:
        .word gdt_end - gdt - 1
        .quad gdt

        .data
        .balign 8
        .globl boot_tsc
boot_tsc:
        .quad 0
start_info_pa:
        .long 0

        .bss
        .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096

/* Memory the entry code writes before use: not cleared (clearing costs
 * time under TCG, where rep stos runs one iteration at a time). */
        .section .noinit, "aw", @nobits
        .balign 4096
pd:     .skip 4 * 4096
        .balign 16
stack:  .skip STACK_SIZE
stack_top:
