/* Exact and nearly exact Gram entries of float32 rows: the refinement levels of the certified
 * distances (aggregators/certify.py, exact.py). Both take a list of entries (pairs of positions in
 * a list of rows) and do every entry in one pass over the columns [col0, col1) of those rows, block
 * by block, so that a refinement reads each involved row once however many pairs it needs.
 *
 * krum_dd_entries_f32   double-double sums: for each entry, S + C holds the dot product of the two
 *                       rows with an error below gamma_H^2 sum |x_a x_b| (H the longest chain of
 *                       additions, computed by the caller from block, lanes and column count).
 *                       ISA variants (exact_impl.h) over 2, 4 or 8 float64 lanes.
 * krum_exact_entries_f32  the exact dot products, as signed 32-bit-digit limbs of the integer
 *                       dot * 2^298 (a small superaccumulator after Neal, 2015: every float32 is
 *                       m 2^(p - 149) with |m| < 2^24, every product m_a m_b fits int64 and lands on
 *                       two int64 limbs chosen by p_a + p_b; limbs take carries every 2^14 columns).
 *                       Scalar; its cost is a few integer operations per product.
 * Rows must be finite (the callers handle NaN/Inf rows). Single-threaded; the caller splits columns.
 * Sums over column ranges add: limbs add limb by limb, (S, C) pairs add as exact partials.
 */
#include <stdint.h>
#include <string.h>

#include "isa.h"

#define KRUM_EXACT_LIMBS 20   /* 32-bit digits: products reach 2^(506 + 48), sums add 31 bits */
#define KRUM_EXACT_CARRY 16384 /* columns between carries: 2^14 adds of < 2^47 stay below 2^62 */

#define KFN(name) name##_generic
#define DW 2
#define KTARGET
#include "exact_impl.h"
#undef KFN
#undef DW
#undef KTARGET

#if KRUM_X86
#define KFN(name) name##_avx2
#define DW 4
#define KTARGET KRUM_TARGET_AVX2
#include "exact_impl.h"
#undef KFN
#undef DW
#undef KTARGET

#define KFN(name) name##_avx512
#define DW 8
#define KTARGET KRUM_TARGET_AVX512
#include "exact_impl.h"
#undef KFN
#undef DW
#undef KTARGET
#endif

const char *krum_exact_isa(void) { return krum_isa_name(krum_isa_selected()); }

/* float64 lanes of the variant that runs (the caller's error bound needs them) */
int64_t krum_exact_lanes(void)
{
    int isa = krum_isa_selected();
    return isa == KRUM_ISA_AVX512 ? 8 : isa == KRUM_ISA_AVX2 ? 4 : 2;
}

/* Adds each entry's double-double dot product over [col0, col1) to (S[e], C[e]). entries: count
 * pairs of positions in rows (r row indices of X). The longest chain of additions of one product:
 * block / (4 lanes) in its lane accumulator, then 4 lanes + block per block into (S, C). Returns 0. */
int krum_dd_entries_f32(const float *X, int64_t stride, const int64_t *rows, const int64_t *entries,
                        int64_t count, int64_t col0, int64_t col1, int64_t block, double *S, double *C)
{
#if KRUM_X86
    int isa = krum_isa_selected();
    if (isa == KRUM_ISA_AVX512) {
        dd_entries_avx512(X, stride, rows, entries, count, col0, col1, block, S, C);
        return 0;
    }
    if (isa == KRUM_ISA_AVX2) {
        dd_entries_avx2(X, stride, rows, entries, count, col0, col1, block, S, C);
        return 0;
    }
#endif
    dd_entries_generic(X, stride, rows, entries, count, col0, col1, block, S, C);
    return 0;
}

/* The float64 level of the certified distances: adds each pair's squared distance over [col0, col1)
 * to (S[e], C[e]) (S + C: the sum of the blocks' float64 sums, exactly). pairs: count pairs of
 * positions in rows (r row indices of X), sorted by first position; work: r * block doubles. Each
 * block's float64 sum is within gamma_H of the exact one (all its terms are >= 0),
 * H = 3 + 2 block / lanes + 2 lanes (the difference, the square and its addition in the lane chain,
 * the lanes and the odd columns in sequence). Returns 0. */
int krum_f64_pairs_f32(const float *X, int64_t stride, const int64_t *rows, int64_t r, const int64_t *pairs,
                       int64_t count, int64_t col0, int64_t col1, int64_t block, double *work, double *S,
                       double *C)
{
    for (int64_t c0 = col0; c0 < col1; c0 += block) {
        int64_t c1 = col1 - c0 < block ? col1 : c0 + block;
#if KRUM_X86
        int isa = krum_isa_selected();
        if (isa == KRUM_ISA_AVX512) {
            f64_block_avx512(X, stride, rows, r, pairs, count, c0, c1, work, S, C);
            continue;
        }
        if (isa == KRUM_ISA_AVX2) {
            f64_block_avx2(X, stride, rows, r, pairs, count, c0, c1, work, S, C);
            continue;
        }
#endif
        f64_block_generic(X, stride, rows, r, pairs, count, c0, c1, work, S, C);
    }
    return 0;
}

/* float32 bits -> m, p: the value is m 2^(p - 149), |m| < 2^24, 0 <= p <= 253 (finite input) */
static inline void krum_exact_split(float v, int32_t *m, int32_t *p)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint32_t e8 = (bits >> 23) & 0xffu;
    int32_t mag = (int32_t)(bits & 0x7fffffu);
    if (e8) {
        mag |= 0x800000;
        *p = (int32_t)e8 - 1;
    } else {
        *p = 0;
    }
    *m = (bits >> 31) ? -mag : mag;
}

static void krum_exact_carry(int64_t *acc)
{
    for (int l = 0; l < KRUM_EXACT_LIMBS - 1; l++) {
        int64_t carry = acc[l] >> 32; /* arithmetic shift (GCC and clang) */
        acc[l] -= carry * ((int64_t)1 << 32);
        acc[l + 1] += carry;
    }
}

/* int32 pairs of work per row and column block (m then p) */
int64_t krum_exact_work_size(int64_t r, int64_t block) { return 2 * r * block; }

/* Adds each entry's exact dot product over [col0, col1), times 2^298, to its KRUM_EXACT_LIMBS
 * limbs in out (limb l weighs 2^(32 l); limbs are signed and need not be normalised). Returns the
 * limb count. */
int64_t krum_exact_entries_f32(const float *X, int64_t stride, const int64_t *rows, int64_t r,
                               const int64_t *entries, int64_t count, int64_t col0, int64_t col1, int64_t block,
                               int32_t *work, int64_t *out)
{
    if (block > KRUM_EXACT_CARRY)
        block = KRUM_EXACT_CARRY;
    for (int64_t c0 = col0; c0 < col1; c0 += block) {
        int64_t cols = col1 - c0 < block ? col1 - c0 : block;
        for (int64_t k = 0; k < r; k++) {
            const float *x = X + rows[k] * stride + c0;
            int32_t *m = work + 2 * k * block, *p = m + block;
            for (int64_t c = 0; c < cols; c++)
                krum_exact_split(x[c], m + c, p + c);
        }
        for (int64_t e = 0; e < count; e++) {
            const int32_t *ma = work + 2 * entries[2 * e] * block, *pa = ma + block;
            const int32_t *mb = work + 2 * entries[2 * e + 1] * block, *pb = mb + block;
            int64_t acc[2][KRUM_EXACT_LIMBS + 1]; /* two copies: consecutive columns rarely wait */
            memset(acc, 0, sizeof acc);
            for (int64_t c = 0; c < cols; c++) {
                int64_t prod = (int64_t)ma[c] * mb[c];
                int32_t pos = pa[c] + pb[c];
                __int128 v = (__int128)prod * ((int64_t)1 << (pos & 31));
                int64_t *a = acc[c & 1] + (pos >> 5);
                a[0] += (int64_t)(v & 0xffffffff);
                a[1] += (int64_t)(v >> 32);
            }
            krum_exact_carry(acc[0]);
            krum_exact_carry(acc[1]);
            int64_t *o = out + e * KRUM_EXACT_LIMBS;
            for (int l = 0; l < KRUM_EXACT_LIMBS; l++)
                o[l] += acc[0][l] + acc[1][l];
            /* out's limbs grow by < 2^33 per block after the carries: normalise them too */
            krum_exact_carry(o);
        }
    }
    return KRUM_EXACT_LIMBS;
}
