// First touch of fresh anonymous memory, in 4 KiB pages and with transparent huge pages requested
// (madvise MADV_HUGEPAGE), against a second pass over the same pages: what a fresh array of hundreds of
// MB costs before any work (Numerics' LargeAllocations).
//   cc -O2 tools/page_faults.c -o /tmp/page_faults && /tmp/page_faults 1024
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
    for (int huge = 0; huge <= 1; huge++) {
        for (int run = 0; run < 3; run++) {
            char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return 1;
            if (huge) madvise(p, bytes, MADV_HUGEPAGE);
            double t0 = seconds();
            memset(p, 1, bytes);
            double t1 = seconds();
            memset(p, 2, bytes);
            double t2 = seconds();
            printf("%s pages: first touch %.2f GB/s, second pass %.2f GB/s\n", huge ? "2 MiB" : "4 KiB",
                   bytes / (t1 - t0) / 1e9, bytes / (t2 - t1) / 1e9);
            munmap(p, bytes);
        }
    }
    return 0;
}
