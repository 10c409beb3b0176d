/* The smallest kernel library: reports the instruction set the kernels dispatch to (proof that the
 * build works, and a record for `krum-mpi bench`), and reads memory as fast as this CPU can, which
 * is the bench's read floor: a floor measured with NumPy alone would sit above what the compiled
 * kernels reach, and flatter them. */
#include "isa.h"

const char *krum_native_isa(void) { return krum_isa_name(krum_isa_selected()); }

/* Sum of count floats, read once, with 4 independent vector accumulators (hides add latency, keeps
 * two loads in flight per cycle). The result is returned so the compiler cannot drop the reads. */
#define KRUM_READ_SUM(NAME, TARGET, BYTES)                                                         \
    TARGET static float NAME(const float *x, int64_t count)                                      \
    {                                                                                             \
        typedef float vec __attribute__((vector_size(BYTES), aligned(4)));                       \
        enum { W = BYTES / 4 };                                                                   \
        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                               \
        int64_t i = 0;                                                                            \
        for (; i + 4 * W <= count; i += 4 * W) {                                                  \
            a0 += *(const vec *)(x + i);                                                          \
            a1 += *(const vec *)(x + i + W);                                                      \
            a2 += *(const vec *)(x + i + 2 * W);                                                  \
            a3 += *(const vec *)(x + i + 3 * W);                                                  \
        }                                                                                         \
        vec total = (a0 + a1) + (a2 + a3);                                                        \
        float sum = 0.0f;                                                                         \
        for (int k = 0; k < W; k++)                                                               \
            sum += total[k];                                                                      \
        for (; i < count; i++)                                                                    \
            sum += x[i];                                                                          \
        return sum;                                                                               \
    }

#if KRUM_X86
KRUM_READ_SUM(read_sum_avx512, KRUM_TARGET_AVX512, 64)
KRUM_READ_SUM(read_sum_avx2, KRUM_TARGET_AVX2, 32)
#endif
KRUM_READ_SUM(read_sum_generic, , 16)

float krum_read_sum(const float *x, int64_t count)
{
    switch (krum_isa_selected()) {
#if KRUM_X86
    case KRUM_ISA_AVX512: return read_sum_avx512(x, count);
    case KRUM_ISA_AVX2: return read_sum_avx2(x, count);
#endif
    default: return read_sum_generic(x, count);
    }
}
