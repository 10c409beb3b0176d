/* One ISA variant of the coordinate-wise order kernel; order.c includes this once per variant with
 * SFX (name suffix), TARGET (attribute), VW (lanes), B (rows sorted in registers: 16 or 8), the
 * uint32 vector type V, VMIN/VMAX, TO_DOUBLE (half a float vector to doubles) and PREFETCH
 * (floats ahead) defined; it undefines them at its end. See order.c for the design. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

typedef float CAT(VF, SFX) __attribute__((vector_size(VW * 4)));
typedef float CAT(VFH, SFX) __attribute__((vector_size(VW * 2)));
typedef double CAT(VD, SFX) __attribute__((vector_size(VW * 4)));  /* half the lanes, in doubles */
typedef int32_t CAT(VS, SFX) __attribute__((vector_size(VW * 4)));
#define VFT CAT(VF, SFX)
#define VFHT CAT(VFH, SFX)
#define VDT CAT(VD, SFX)
#define VST CAT(VS, SFX)
typedef int64_t CAT(VL, SFX) __attribute__((vector_size(VW * 4)));  /* masks of VDT comparisons */
typedef int32_t CAT(VSH, SFX) __attribute__((vector_size(VW * 2)));
#define VLT CAT(VL, SFX)
#define VSHT CAT(VSH, SFX)

/* Float bits -> unsigned sort key: flipping the magnitude bits of negatives gives a signed order
 * -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN; subtracting the key of -inf (wrapping)
 * then moves the negative NaNs above everything, so unsigned order is NumPy's, NaN on top. Three
 * vector operations; the sorting networks are what the kernel spends its time on. */
#define KEY_SHIFT 0x807fffffu
static inline TARGET V CAT(to_key, SFX)(V x)
{
    V sign = (V)((VST)x >> 31);
    return (x ^ (sign & 0x7fffffff)) - KEY_SHIFT;
}

static inline TARGET VFT CAT(key_value, SFX)(V key)
{
    V k = key + KEY_SHIFT;
    return (VFT)(k ^ ((V)((VST)k >> 31) & 0x7fffffff));
}

static inline TARGET VFT CAT(row_value, SFX)(const V *t, int64_t p)
{
    return CAT(key_value, SFX)(t[p]);
}

/* The correctly rounded (lo + hi) / 2 of float32 values: their sum in float64 is one rounding,
 * halving it is exact, and float64 has more than 2 x 24 + 2 bits, so the rounding to float32 is
 * innocuous (Figueroa 1995), subnormals included. lo*0.5f + hi*0.5f rounded each half first (the
 * median of 2^-149 and 2^-149 came out 0). The NumPy path's middle() computes the same. */
static inline TARGET VFT CAT(mid_value, SFX)(VFT lo, VFT hi)
{
    VFHT l[2], h[2], r[2];
    __builtin_memcpy(l, &lo, sizeof lo);
    __builtin_memcpy(h, &hi, sizeof hi);
    for (int k = 0; k < 2; k++)
        r[k] = __builtin_convertvector((TO_DOUBLE(l[k]) + TO_DOUBLE(h[k])) * 0.5, VFHT);
    VFT res;
    __builtin_memcpy(&res, r, sizeof res);
    return res;
}

/* TwoSum of the float32 lanes lo + hi in float64, per half of the lanes: s = fl(lo + hi) and
 * e = lo + hi - s exactly (no overflow for float32 values). */
static inline TARGET void CAT(two_sum_halves, SFX)(VFT lo, VFT hi, VDT *s, VDT *e)
{
    VFHT l[2], h[2];
    __builtin_memcpy(l, &lo, sizeof lo);
    __builtin_memcpy(h, &hi, sizeof hi);
    for (int k = 0; k < 2; k++) {
        VDT p = TO_DOUBLE(l[k]), q = TO_DOUBLE(h[k]);
        s[k] = p + q;
        VDT back = s[k] - p;
        e[k] = (p - (s[k] - back)) + (q - back);
    }
}

/* Per lane, 1 where m_s + m_e > a + b exactly (ms, me: the TwoSum of the median's two values from
 * two_sum_halves; 0 when NaN is involved): a larger rounded float64 sum means a larger exact sum,
 * and equal rounded sums are decided by the exact remainders. The closest window's test
 * m - x_p > x_q - m with m = (lo + hi) / 2 the exact median; the NumPy path's sum_greater. */
static inline TARGET VST CAT(exact_greater, SFX)(const VDT *ms, const VDT *me, VFT a, VFT b)
{
    VFHT x[2], y[2];
    VSHT g[2];
    __builtin_memcpy(x, &a, sizeof a);
    __builtin_memcpy(y, &b, sizeof b);
    for (int k = 0; k < 2; k++) {
        VDT u = TO_DOUBLE(x[k]), v = TO_DOUBLE(y[k]), t = u + v;
        VDT back = t - u, et = (u - (t - back)) + (v - back);
        VLT gt = (ms[k] > t) | ((ms[k] == t) & (me[k] > et));
        g[k] = __builtin_convertvector(-gt, VSHT);
    }
    VST res;
    __builtin_memcpy(&res, g, sizeof res);
    return res;
}

/* Row i's VW columns as keys; the largest key for the padding rows i >= n. */
static inline TARGET V CAT(load_key, SFX)(const float *const *rowp, int64_t off, int64_t i, int64_t n)
{
    if (i >= n)
        return (V){0} + UINT32_MAX;
    V x;
    __builtin_memcpy(&x, rowp[i] + off, sizeof x);
    /* n row streams at once defeat the hardware prefetchers: fetch 1 KiB ahead per row, into L2
     * (into L1 it is slower: n rows x 1 KiB does not fit L1 and evicts the tile; measured 1.7x) */
    __builtin_prefetch(rowp[i] + off + PREFETCH, 0, 2);
    return CAT(to_key, SFX)(x);
}

/* Loads rows i0 .. i0+B-1 and sorts them in registers into t[0..B) (each lane its own column). */
static inline TARGET void CAT(load_sort_block, SFX)(V *t, const float *const *rowp, int64_t off, int64_t i0,
                                                    int64_t n)
{
#define LK(k) CAT(load_key, SFX)(rowp, off, i0 + k, n)
#if B == 16
    V r0 = LK(0), r1 = LK(1), r2 = LK(2), r3 = LK(3), r4 = LK(4), r5 = LK(5), r6 = LK(6), r7 = LK(7);
    V r8 = LK(8), r9 = LK(9), r10 = LK(10), r11 = LK(11), r12 = LK(12), r13 = LK(13), r14 = LK(14), r15 = LK(15);
    SORT16;
    t[0] = r0; t[1] = r1; t[2] = r2; t[3] = r3; t[4] = r4; t[5] = r5; t[6] = r6; t[7] = r7;
    t[8] = r8; t[9] = r9; t[10] = r10; t[11] = r11; t[12] = r12; t[13] = r13; t[14] = r14; t[15] = r15;
#else
    V r0 = LK(0), r1 = LK(1), r2 = LK(2), r3 = LK(3), r4 = LK(4), r5 = LK(5), r6 = LK(6), r7 = LK(7);
    SORT8;
    t[0] = r0; t[1] = r1; t[2] = r2; t[3] = r3; t[4] = r4; t[5] = r5; t[6] = r6; t[7] = r7;
#endif
#undef LK
}

/* The last stages of a bitonic merge (distances B/2 .. 1) on t[0..B), in registers. */
static inline TARGET void CAT(clean_block, SFX)(V *t)
{
#if B == 16
    V r0 = t[0], r1 = t[1], r2 = t[2], r3 = t[3], r4 = t[4], r5 = t[5], r6 = t[6], r7 = t[7];
    V r8 = t[8], r9 = t[9], r10 = t[10], r11 = t[11], r12 = t[12], r13 = t[13], r14 = t[14], r15 = t[15];
    CLEAN16;
    t[0] = r0; t[1] = r1; t[2] = r2; t[3] = r3; t[4] = r4; t[5] = r5; t[6] = r6; t[7] = r7;
    t[8] = r8; t[9] = r9; t[10] = r10; t[11] = r11; t[12] = r12; t[13] = r13; t[14] = r14; t[15] = r15;
#else
    V r0 = t[0], r1 = t[1], r2 = t[2], r3 = t[3], r4 = t[4], r5 = t[5], r6 = t[6], r7 = t[7];
    CLEAN8;
    t[0] = r0; t[1] = r1; t[2] = r2; t[3] = r3; t[4] = r4; t[5] = r5; t[6] = r6; t[7] = r7;
#endif
}

/* t[0..B) holds a sorted block; loads rows i0 .. i0+B-1, sorts them in registers and merges the
 * two into t[0..2B): the flip stage pairs t[k] with the new block's element B-1-k, so the upper
 * half never leaves the registers before its half-cleaner (saves a third of the tile traffic). */
static inline TARGET void CAT(load_merge_pair, SFX)(V *t, const float *const *rowp, int64_t off, int64_t i0,
                                                    int64_t n)
{
#define LK(k) CAT(load_key, SFX)(rowp, off, i0 + k, n)
#define FX(k, r) do { V a_ = t[k]; t[k] = VMIN(a_, r); r = VMAX(a_, r); } while (0)
#if B == 16
    V r0 = LK(0), r1 = LK(1), r2 = LK(2), r3 = LK(3), r4 = LK(4), r5 = LK(5), r6 = LK(6), r7 = LK(7);
    V r8 = LK(8), r9 = LK(9), r10 = LK(10), r11 = LK(11), r12 = LK(12), r13 = LK(13), r14 = LK(14), r15 = LK(15);
    SORT16;
    FX(0, r15); FX(1, r14); FX(2, r13); FX(3, r12); FX(4, r11); FX(5, r10); FX(6, r9); FX(7, r8);
    FX(8, r7); FX(9, r6); FX(10, r5); FX(11, r4); FX(12, r3); FX(13, r2); FX(14, r1); FX(15, r0);
    CLEAN16;
    t[16] = r0; t[17] = r1; t[18] = r2; t[19] = r3; t[20] = r4; t[21] = r5; t[22] = r6; t[23] = r7;
    t[24] = r8; t[25] = r9; t[26] = r10; t[27] = r11; t[28] = r12; t[29] = r13; t[30] = r14; t[31] = r15;
#else
    V r0 = LK(0), r1 = LK(1), r2 = LK(2), r3 = LK(3), r4 = LK(4), r5 = LK(5), r6 = LK(6), r7 = LK(7);
    SORT8;
    FX(0, r7); FX(1, r6); FX(2, r5); FX(3, r4); FX(4, r3); FX(5, r2); FX(6, r1); FX(7, r0);
    CLEAN8;
    t[8] = r0; t[9] = r1; t[10] = r2; t[11] = r3; t[12] = r4; t[13] = r5; t[14] = r6; t[15] = r7;
#endif
#undef FX
#undef LK
    CAT(clean_block, SFX)(t);
}

/* Sorted value at position p minus the median, in the lanes whose closest window holds p, else 0.
 * Positions in [n-keep, keep) are inside every window (start <= n-keep): no mask there. */
static inline TARGET VFT CAT(window_offset, SFX)(const V *t, int64_t p, VFT med, VST start, int64_t n,
                                                 int64_t keep)
{
    VFT d = CAT(row_value, SFX)(t, p) - med;
    if (p < n - keep || p >= keep)
        d = (VFT)((VST)d & ((start <= (int32_t)p) & (start > (int32_t)(p - keep))));
    return d;
}

/* The last merge without sorting, for n == N rows in two sorted halves A = t[0..m), B = t[m..N):
 * the bitonic flip L[i] = min(A[i], B[m-1-i]), U[i] = max(A[i], B[m-1-i]) splits the values into
 * the m smallest (L) and the m largest (U), so the median's positions m-1 and m are max L and
 * min U. L and U are bitonic, so a half-cleaner at distance m/2 splits each into halves as sets:
 * the middle positions [m/2, N - m/2) are the upper half of L and the lower half of U, which is
 * the trimmed range when 4 b == N. Reads the tile only: no stores, about a third of the
 * comparators of sorting the parts, and the reductions come straight from registers. */
static inline TARGET VFT CAT(split_median, SFX)(const V *t, int64_t N)
{
    int64_t h = N / 4;  /* a multiple of 2: N >= 2 B >= 16 */
    V lo0 = (V){0}, lo1 = (V){0}, hi0 = (V){0} + UINT32_MAX, hi1 = hi0;  /* two chains each */
    for (int64_t i = 0; i < h; i += 2) {
        /* upper half of L and lower half of U at i, then at i + 1 */
        V l0 = VMAX(VMIN(t[i], t[N - 1 - i]), VMIN(t[i + h], t[N - 1 - i - h]));
        V u0 = VMIN(VMAX(t[i], t[N - 1 - i]), VMAX(t[i + h], t[N - 1 - i - h]));
        V l1 = VMAX(VMIN(t[i + 1], t[N - 2 - i]), VMIN(t[i + 1 + h], t[N - 2 - i - h]));
        V u1 = VMIN(VMAX(t[i + 1], t[N - 2 - i]), VMAX(t[i + 1 + h], t[N - 2 - i - h]));
        lo0 = VMAX(lo0, l0);
        lo1 = VMAX(lo1, l1);
        hi0 = VMIN(hi0, u0);
        hi1 = VMIN(hi1, u1);
    }
    return CAT(mid_value, SFX)(CAT(key_value, SFX)(VMAX(lo0, lo1)), CAT(key_value, SFX)(VMIN(hi0, hi1)));
}

/* Sum over the positions [N/4 - q, N - N/4 + q) of (value - med), q = 0 or 1, as sets (see
 * split_median). A half-cleaner on L also gives its lower half LL = {min(L[i], L[i+m/2])}, the
 * N/4 smallest values: its largest is position N/4 - 1; likewise for U's upper half and position
 * N - N/4. So q = 1 (b = N/4 - 1: n = 64 with f = 15) costs two more min/max per pair. */
static inline TARGET VFT CAT(split_middle_sum, SFX)(const V *t, int64_t N, VFT med, int q)
{
    int64_t h = N / 4;
    VFT acc0 = (VFT){0}, acc1 = (VFT){0};
    V below = (V){0}, above = (V){0} + UINT32_MAX;
    for (int64_t i = 0; i < h; i++) {
        V l0 = VMIN(t[i], t[N - 1 - i]), l1 = VMIN(t[i + h], t[N - 1 - i - h]);
        V u0 = VMAX(t[i], t[N - 1 - i]), u1 = VMAX(t[i + h], t[N - 1 - i - h]);
        acc0 += CAT(key_value, SFX)(VMAX(l0, l1)) - med;
        acc1 += CAT(key_value, SFX)(VMIN(u0, u1)) - med;
        if (q) {
            below = VMAX(below, VMIN(l0, l1));
            above = VMIN(above, VMAX(u0, u1));
        }
    }
    if (q) {
        acc0 += CAT(key_value, SFX)(below) - med;
        acc1 += CAT(key_value, SFX)(above) - med;
    }
    return acc0 + acc1;
}

/* Sorts rows [0, n) of VW columns (row i at rowp[i] + off) into the tile t (N >= n rows, a power
 * of two >= B; rows >= n padded with the largest key), then writes the rule's VW results to out.
 * need[a] = number of positions < a whose sorted value the rule reads one by one: the last merge
 * sorts only the parts holding one (the rule sums the others as sets, in any order). */
static TARGET void CAT(group, SFX)(const float *const *rowp, int64_t off, int64_t n, int64_t N, int mode,
                                   int64_t param, const int16_t *need, V *t, float *out)
{
    /* sorted runs of B rows, or of 2B when that merge is not the last one (it is pruned then) */
    int64_t run = N >= 4 * B ? 2 * B : B;
    for (int64_t blk = 0; blk < N; blk += B) {
        if (blk >= n)  /* all padding: already sorted */
            for (int64_t i = blk; i < blk + B; i++)
                t[i] = (V){0} + UINT32_MAX;
        else if (run == 2 * B && blk % (2 * B) == B)
            CAT(load_merge_pair, SFX)(t + blk - B, rowp, off, blk, n);
        else
            CAT(load_sort_block, SFX)(t + blk, rowp, off, blk, n);
    }
    /* Bitonic merges of sorted runs of s/2 into s: compare t[i] with t[s-1-i] (this turns two
     * ascending runs into two bitonic halves), then half-cleaners at distances s/4 .. 1; the ones
     * below B run in registers. A run whose upper half is all padding is already sorted. After a
     * half-cleaner every value of a part is <= every value of the next part, so in the last merge
     * a part without needed positions stays unsorted. */
    /* n == N and the rule reads only the median and the middle half (+- 1): the last merge is
     * split_median and split_middle_sum */
    int64_t q = N / 4 - param;
    int split = n == N && N >= 2 * B &&
                (mode == KRUM_ORDER_MEDIAN || (mode == KRUM_ORDER_TRIMMED && (q == 0 || q == 1)));
    for (int64_t s = 2 * run; s <= (split ? N / 2 : N); s *= 2) {
        int last = s == N;
        for (int64_t base = 0; base + s / 2 < n; base += s) {
            V *r = t + base;
            /* a comparator with a padding row (index >= n) leaves both in place: skip those */
            for (int64_t i = base + s - n > 0 ? base + s - n : 0; i < s / 2; i++) {
                V a = r[i], b = r[s - 1 - i];
                r[i] = VMIN(a, b);
                r[s - 1 - i] = VMAX(a, b);
            }
            for (int64_t h = s / 4; h >= B; h /= 2)
                for (int64_t a = 0; a < s; a += 2 * h)
                    if (!last || need[base + a + 2 * h] > need[base + a])
                        for (int64_t i = a; i < a + h && base + i + h < n; i++) {
                            V x = r[i], y = r[i + h];
                            r[i] = VMIN(x, y);
                            r[i + h] = VMAX(x, y);
                        }
            for (int64_t blk = 0; blk < s && base + blk < n; blk += B) {
                int64_t needed = last ? need[base + blk + B] - need[base + blk] : B;
                if (needed > 1)
                    CAT(clean_block, SFX)(r + blk);
                else if (needed == 1)  /* one position: only the halves on its path, on the tile */
                    for (int64_t h = B / 2; h >= 1; h /= 2)
                        for (int64_t a = blk; a < blk + B; a += 2 * h)
                            if (need[base + a + 2 * h] > need[base + a])
                                for (int64_t i = a; i < a + h && base + i + h < n; i++) {
                                    V x = r[i], y = r[i + h];
                                    r[i] = VMIN(x, y);
                                    r[i + h] = VMAX(x, y);
                                }
            }
        }
    }

    if (split) {
        VFT med = CAT(split_median, SFX)(t, N);
        VFT res = mode == KRUM_ORDER_MEDIAN ? med : med + CAT(split_middle_sum, SFX)(t, N, med, (int)q) / (float)(N - 2 * param);
        __builtin_memcpy(out, &res, sizeof res);
        return;
    }

    /* Reductions over the sorted tile, NumPy's float32 arithmetic (no FMA contraction under -std=c11). */
    VFT med = n % 2 ? CAT(row_value, SFX)(t, n / 2)
                    : CAT(mid_value, SFX)(CAT(row_value, SFX)(t, n / 2 - 1), CAT(row_value, SFX)(t, n / 2));
    VFT res = med;
    if (mode == KRUM_ORDER_TRIMMED) {
        VFT acc = (VFT){0};
        for (int64_t p = param; p < n - param; p++)
            acc += CAT(row_value, SFX)(t, p) - med;
        res = med + acc / (float)(n - 2 * param);
    } else if (mode == KRUM_ORDER_CLOSEST) {
        /* window start = #positions p whose value is strictly farther below the median than the
         * value keep places up is above it, decided exactly (NaN compares false); then a float64
         * sum over it */
        int64_t keep = param;
        VST start = (VST){0};
        /* Rounding is monotone, so unequal float32 sums already order the exact ones (overflow to
         * +-inf included); only when some lane's float32 sums are equal (rare outside ties) is the
         * count redone exactly, in float64 (exact_greater). */
        VFT mlo = CAT(row_value, SFX)(t, (n - 1) / 2), mhi = CAT(row_value, SFX)(t, n / 2), sm = mlo + mhi;
        VST tied = (VST){0};
        for (int64_t p = 0; p < n - keep; p++) {
            VFT st = CAT(row_value, SFX)(t, p) + CAT(row_value, SFX)(t, p + keep);
            start -= (VST)(sm > st);
            tied |= (VST)(sm == st);
        }
        int32_t any = 0;
        for (int l = 0; l < VW; l++)
            any |= tied[l];
        if (any) {
            VDT ms[2], me[2];
            CAT(two_sum_halves, SFX)(mlo, mhi, ms, me);
            start = (VST){0};
            for (int64_t p = 0; p < n - keep; p++)
                start += CAT(exact_greater, SFX)(ms, me, CAT(row_value, SFX)(t, p), CAT(row_value, SFX)(t, p + keep));
        }
        /* Four float64 accumulators of register width (lane halves x even/odd p), named: a VW-wide double
         * vector or an indexed array would live on the stack, a store-forward chain per position. */
        VDT a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
#define DELTA(p) CAT(window_offset, SFX)(t, p, med, start, n, keep)
#define ADD(lo, hi, d) do { VFHT h_[2]; __builtin_memcpy(h_, &(d), sizeof(d)); \
                            lo += TO_DOUBLE(h_[0]); hi += TO_DOUBLE(h_[1]); } while (0)
        /* only the positions inside some lane's window: [min start, max start + keep) */
        int32_t lo = start[0], hi = start[0];
        for (int l = 1; l < VW; l++) {
            lo = start[l] < lo ? start[l] : lo;
            hi = start[l] > hi ? start[l] : hi;
        }
        int64_t p = lo, end = hi + keep;
        for (; p + 1 < end; p += 2) {
            VFT d0 = DELTA(p), d1 = DELTA(p + 1);
            ADD(a0, a1, d0);
            ADD(a2, a3, d1);
        }
        if (p < end) {
            VFT d0 = DELTA(p);
            ADD(a0, a1, d0);
        }
#undef DELTA
#undef ADD
        VDT acc[2] = {a0 + a2, a1 + a3};
        VFHT medh[2], resh[2];
        __builtin_memcpy(medh, &med, sizeof med);
        for (int k = 0; k < 2; k++)
            resh[k] = __builtin_convertvector(TO_DOUBLE(medh[k]) + acc[k] / (double)keep,
                                              VFHT);
        __builtin_memcpy(&res, resh, sizeof res);
    }
    __builtin_memcpy(out, &res, sizeof res);
}

static TARGET void CAT(order_reduce, SFX)(const float *const *rowp, int64_t n, int64_t N, int64_t col0,
                                          int64_t col1, int mode, int64_t param, const int16_t *need,
                                          float *out)
{
    V t[KRUM_ORDER_MAX_ROWS] __attribute__((aligned(64)));
    int64_t c = col0;
    for (; c + VW <= col1; c += VW)
        CAT(group, SFX)(rowp, c, n, N, mode, param, need, t, out + c);
    if (c < col1) {  /* remainder columns: copy them into a zero-filled VW-wide block and run that */
        float stage[KRUM_ORDER_MAX_ROWS][VW];
        const float *staged[KRUM_ORDER_MAX_ROWS];
        float res[VW];
        for (int64_t i = 0; i < n; i++) {
            for (int64_t l = 0; l < VW; l++)
                stage[i][l] = c + l < col1 ? rowp[i][c + l] : 0.0f;
            staged[i] = stage[i];
        }
        CAT(group, SFX)(staged, 0, n, N, mode, param, need, t, res);
        for (int64_t l = 0; c + l < col1; l++)
            out[c + l] = res[l];
    }
}

#undef VFT
#undef VLT
#undef VSHT
#undef VDT
#undef VFHT
#undef VST
#undef KEY_SHIFT
#undef CAT
#undef CAT_
/* the includer's parameters: the next variant defines its own */
#undef SFX
#undef TARGET
#undef VW
#undef B
#undef PREFETCH
#undef V
#undef VMIN
#undef VMAX
#undef TO_DOUBLE
