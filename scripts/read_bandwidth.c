// How fast this machine's cores can stream memory they only read: the ceiling of a decode step
// at batch 1, which reads every weight once per token (docs/BENCHMARKS.md).
//
//   gcc -O3 -march=native -fopenmp scripts/read_bandwidth.c -o /tmp/read_bandwidth
//   /tmp/read_bandwidth            # THREADS=2 by default; prints 8 passes over 270 MiB
//
// Each thread XORs its half of a 270 MiB buffer (the size of SmolLM2-135M in bf16) into four
// AVX-512 registers, so nothing but the loads bounds it.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const char *env = getenv("THREADS");
    int threads = env ? atoi(env) : 2;
    size_t n = (size_t)270 << 20;
    char *buf = aligned_alloc(64, n);
    memset(buf, 1, n);
    for (int pass = 0; pass < 8; pass++) {
        double t0 = now();
        int sink = 0;
#pragma omp parallel num_threads(threads) reduction(| : sink)
        {
            size_t part = n / omp_get_num_threads();
            const char *p = buf + omp_get_thread_num() * part;
            __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
            for (size_t i = 0; i + 256 <= part; i += 256) {
                a = _mm512_xor_si512(a, _mm512_load_si512(p + i));
                b = _mm512_xor_si512(b, _mm512_load_si512(p + i + 64));
                c = _mm512_xor_si512(c, _mm512_load_si512(p + i + 128));
                d = _mm512_xor_si512(d, _mm512_load_si512(p + i + 192));
            }
            sink |= _mm512_reduce_or_epi32(_mm512_or_si512(_mm512_or_si512(a, b), _mm512_or_si512(c, d)));
        }
        printf("%d threads: %.1f GB/s (%d)\n", threads, n / (now() - t0) / 1e9, sink & 1);
    }
    free(buf);
    return 0;
}
