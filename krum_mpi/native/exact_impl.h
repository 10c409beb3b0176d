/* One instruction-set variant of the double-double Gram entries (exact.c includes this once per
 * ISA, with KFN, DW (float64 lanes) and KTARGET defined). Every product of two float32 values is
 * exact in float64; the products are summed with TwoSum (never contracted: the build sets
 * -ffp-contract=off), so that s + (the exact sum of the TwoSum errors) is the exact sum; the
 * errors themselves are summed in float64. Four independent lane accumulators hide the latency of
 * the dependent additions. */

typedef double KFN(dvec) __attribute__((vector_size(DW * 8)));
typedef float KFN(fvec) __attribute__((vector_size(DW * 4)));

/* s + p with its rounding error added to c (TwoSum: six additions, exact in round-to-nearest) */
#define KRUM_TWO_SUM_INTO(s, c, p)          \
    do {                                    \
        __typeof__(s) t_ = (s) + (p);       \
        __typeof__(s) bp_ = t_ - (s);       \
        (c) += ((s) - (t_ - bp_)) + ((p) - bp_); \
        (s) = t_;                           \
    } while (0)

/* DW float32 values at p as float64 lanes */
KTARGET static inline KFN(dvec) KFN(dd_load)(const float *p)
{
    KFN(fvec) v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, KFN(dvec));
}

/* each entry's sum over the columns [c0, c1) of X, TwoSum'd into (S, C): four lane accumulators over
 * whole groups of 4 DW columns, then the lanes and the remaining columns one by one */
KTARGET static void KFN(dd_block)(const float *X, int64_t stride, const int64_t *rows, const int64_t *entries,
                                  int64_t count, int64_t c0, int64_t c1, double *S, double *C)
{
    int64_t whole = c0 + (c1 - c0) / (4 * DW) * (4 * DW);
    for (int64_t e = 0; e < count; e++) {
        const float *a = X + rows[entries[2 * e]] * stride;
        const float *b = X + rows[entries[2 * e + 1]] * stride;
        KFN(dvec) s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, k0 = {0}, k1 = {0}, k2 = {0}, k3 = {0};
        for (int64_t c = c0; c < whole; c += 4 * DW) {
            KFN(dvec) p0 = KFN(dd_load)(a + c) * KFN(dd_load)(b + c);
            KFN(dvec) p1 = KFN(dd_load)(a + c + DW) * KFN(dd_load)(b + c + DW);
            KFN(dvec) p2 = KFN(dd_load)(a + c + 2 * DW) * KFN(dd_load)(b + c + 2 * DW);
            KFN(dvec) p3 = KFN(dd_load)(a + c + 3 * DW) * KFN(dd_load)(b + c + 3 * DW);
            KRUM_TWO_SUM_INTO(s0, k0, p0);
            KRUM_TWO_SUM_INTO(s1, k1, p1);
            KRUM_TWO_SUM_INTO(s2, k2, p2);
            KRUM_TWO_SUM_INTO(s3, k3, p3);
        }
        double sum = S[e], err = C[e];
        for (int l = 0; l < DW; l++) {
            KRUM_TWO_SUM_INTO(sum, err, s0[l]);
            KRUM_TWO_SUM_INTO(sum, err, s1[l]);
            KRUM_TWO_SUM_INTO(sum, err, s2[l]);
            KRUM_TWO_SUM_INTO(sum, err, s3[l]);
            err += (k0[l] + k1[l]) + (k2[l] + k3[l]);
        }
        for (int64_t c = whole; c < c1; c++) {
            double p = (double)a[c] * (double)b[c];
            KRUM_TWO_SUM_INTO(sum, err, p);
        }
        S[e] = sum;
        C[e] = err;
    }
}

KTARGET static void KFN(dd_entries)(const float *X, int64_t stride, const int64_t *rows, const int64_t *entries,
                                    int64_t count, int64_t col0, int64_t col1, int64_t block, double *S, double *C)
{
    for (int64_t c0 = col0; c0 < col1; c0 += block) {
        int64_t c1 = col1 - c0 < block ? col1 : c0 + block;
        KFN(dd_block)(X, stride, rows, entries, count, c0, c1, S, C);
    }
}

/* The float64 level (krum_f64_pairs_f32): each pair's sum over [c0, c1) of (a - b)^2 from the rows
 * converted once per block to float64 (work: r rows x block). Pairs come sorted by their first row:
 * a run of up to KRUM_F64_GROUP pairs sharing it keeps one accumulator each in registers and loads
 * the shared row once per vector step. Per term: the difference rounds once (it is exact unless the
 * exponents lie far apart), the square and its addition once or twice (contracted or not), in a
 * chain of block / DW steps in its lane; then the DW lanes and the odd columns in sequence. The
 * block's sum is TwoSum'd into (S, C) so that the chain does not grow with the number of blocks. */
#ifndef KRUM_F64_GROUP
#define KRUM_F64_GROUP 8
#define KRUM_F64_STREAMS 8
/* G pairs (a, b[0..G)) over the whole vectors of a block: G accumulators in registers, a loaded once
 * per step. G is a constant at every call: the inner loop unrolls. */
#define KRUM_F64_RUN(G)                                            \
    for (int64_t c = 0; c < whole; c += DW) {                      \
        KFN(dvec) va, vb;                                          \
        memcpy(&va, a + c, sizeof va);                             \
        for (int t = 0; t < (G); t++) {                            \
            memcpy(&vb, b[t] + c, sizeof vb);                      \
            vb = va - vb;                                          \
            acc[t] += vb * vb;                                     \
        }                                                          \
    }
#endif
KRUM_CONTRACT_BEGIN
KTARGET KRUM_CONTRACT static void KFN(f64_block)(const float *X, int64_t stride, const int64_t *rows, int64_t r,
                                                 const int64_t *pairs, int64_t count, int64_t c0, int64_t c1,
                                                 double *work, double *S, double *C)
{
    int64_t cols = c1 - c0, whole = cols / DW * DW;
    /* the rows' block converted to float64, KRUM_F64_STREAMS rows side by side: the hardware
     * prefetchers follow several streams at once, where one row after another waits on each */
    for (int64_t k0 = 0; k0 < r; k0 += KRUM_F64_STREAMS) {
        int64_t k1 = r - k0 < KRUM_F64_STREAMS ? r : k0 + KRUM_F64_STREAMS;
        int64_t c = 0;
        for (; c < whole; c += DW)
            for (int64_t k = k0; k < k1; k++) {
                KFN(dvec) v = KFN(dd_load)(X + rows[k] * stride + c0 + c);
                memcpy(work + k * cols + c, &v, sizeof v);
            }
        for (int64_t k = k0; k < k1; k++)
            for (int64_t t = c; t < cols; t++)
                work[k * cols + t] = (double)X[rows[k] * stride + c0 + t];
    }
    for (int64_t e = 0; e < count;) {
        int64_t g = 1;
        while (g < KRUM_F64_GROUP && e + g < count && pairs[2 * (e + g)] == pairs[2 * e])
            g++;
        g = g >= 8 ? 8 : g >= 4 ? 4 : g >= 2 ? 2 : 1;  /* a run of 8, 4, 2 or 1 pairs at a time */
        const double *a = work + pairs[2 * e] * cols;
        const double *b[KRUM_F64_GROUP];
        KFN(dvec) acc[KRUM_F64_GROUP];
        for (int64_t t = 0; t < g; t++) {
            b[t] = work + pairs[2 * (e + t) + 1] * cols;
            memset(&acc[t], 0, sizeof acc[t]);
        }
        if (g == 8) {
            KRUM_F64_RUN(8)
        } else if (g == 4) {
            KRUM_F64_RUN(4)
        } else if (g == 2) {
            KRUM_F64_RUN(2)
        } else {
            KRUM_F64_RUN(1)
        }
        for (int64_t t = 0; t < g; t++) {
            double sum = 0.0;
            for (int l = 0; l < DW; l++)
                sum += acc[t][l];
            for (int64_t c = whole; c < cols; c++) {
                double v = a[c] - b[t][c];
                sum += v * v;
            }
            KRUM_TWO_SUM_INTO(S[e + t], C[e + t], sum);
        }
        e += g;
    }
}
KRUM_CONTRACT_END
