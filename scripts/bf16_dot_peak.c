// The rate of `vdpbf16ps` (32 bf16 products added into 16 f32 lanes) on this machine's cores: the
// ceiling of a bf16 prefill, whose products are these instructions (docs/BENCHMARKS.md).
//
//   gcc -O3 -march=native -fopenmp scripts/bf16_dot_peak.c -o /tmp/bf16_dot_peak
//   /tmp/bf16_dot_peak             # 2 threads, 24 independent accumulators each
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const long iters = 200000000;
    double t0 = now();
    float sink = 0;
#pragma omp parallel num_threads(2) reduction(+ : sink)
    {
        __m512 acc[24];
        for (int j = 0; j < 24; j++) acc[j] = _mm512_set1_ps(j);
        __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);
        __m512bh b = (__m512bh)_mm512_set1_epi32(0x3c003c00);
        for (long i = 0; i < iters / 24; i++) {
#pragma GCC unroll 24
            for (int j = 0; j < 24; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
            __asm__ volatile("" : "+v"(a));
        }
        float s = 0;
        for (int j = 0; j < 24; j++) s += _mm512_reduce_add_ps(acc[j]);
        sink += s;
    }
    double t = now() - t0;
    printf("%.2f G vdpbf16ps/s over 2 threads = %.0f GFLOP/s (%g)\n", 2 * iters / t / 1e9,
           2 * iters * 64 / t / 1e9, sink);
    return 0;
}
