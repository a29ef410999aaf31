/* Preloaded into a tunnel by test_allocations.py: counts calls to the allocator and writes the
 * count to the file named by $TCPTUNNEL_ALLOCATION_COUNT when the process exits. */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern void* __libc_malloc(size_t size);
extern void* __libc_calloc(size_t count, size_t size);
extern void* __libc_realloc(void* pointer, size_t size);

static atomic_ulong calls;

void* malloc(size_t size) {
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_malloc(size);
}

void* calloc(size_t count, size_t size) {
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_calloc(count, size);
}

void* realloc(void* pointer, size_t size) {
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_realloc(pointer, size);
}

__attribute__((destructor)) static void write_count(void) {
    const char* path = getenv("TCPTUNNEL_ALLOCATION_COUNT");
    if (path == NULL) {
        return;
    }
    char text[32];
    const int length = snprintf(text, sizeof text, "%lu\n", atomic_load(&calls));
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        (void)!write(fd, text, (size_t)length);
        close(fd);
    }
}
