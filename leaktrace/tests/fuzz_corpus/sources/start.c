/* A program with a dynamic linker (PT_INTERP) and nothing else. */
void _start(void) {
    __asm__ volatile("mov $60, %eax; xor %edi, %edi; syscall");
}
