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

/* rows of the block as float64, each width columns (width a multiple of 4 DW, zero padded) */
KTARGET static void KFN(dd_widen)(const float *X, int64_t stride, const int64_t *rows, int64_t r,
                                  int64_t c0, int64_t cols, int64_t width, double *out)
{
    for (int64_t k = 0; k < r; k++) {
        const float *x = X + rows[k] * stride + c0;
        double *o = out + k * width;
        for (int64_t c = 0; c < cols; c++)
            o[c] = (double)x[c];
        for (int64_t c = cols; c < width; c++)
            o[c] = 0.0;
    }
}

/* the entries' sums over one widened block, TwoSum'd into (S, C) lane by lane */
KTARGET static void KFN(dd_block)(const double *wide, int64_t width, const int64_t *entries,
                                  int64_t count, double *S, double *C)
{
    for (int64_t e = 0; e < count; e++) {
        const double *a = wide + entries[2 * e] * width;
        const double *b = wide + entries[2 * e + 1] * width;
        KFN(dvec) s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
        for (int64_t c = 0; c < width; c += 4 * DW) {
            KFN(dvec) x0, x1, x2, x3, y0, y1, y2, y3;
            memcpy(&x0, a + c, sizeof x0);
            memcpy(&x1, a + c + DW, sizeof x1);
            memcpy(&x2, a + c + 2 * DW, sizeof x2);
            memcpy(&x3, a + c + 3 * DW, sizeof x3);
            memcpy(&y0, b + c, sizeof y0);
            memcpy(&y1, b + c + DW, sizeof y1);
            memcpy(&y2, b + c + 2 * DW, sizeof y2);
            memcpy(&y3, b + c + 3 * DW, sizeof y3);
            KFN(dvec) p0 = x0 * y0, p1 = x1 * y1, p2 = x2 * y2, p3 = x3 * y3;
            KRUM_TWO_SUM_INTO(s0, c0, p0);
            KRUM_TWO_SUM_INTO(s1, c1, p1);
            KRUM_TWO_SUM_INTO(s2, c2, p2);
            KRUM_TWO_SUM_INTO(s3, c3, p3);
        }
        double sum = S[e], err = C[e];
        for (int l = 0; l < DW; l++) {
            KRUM_TWO_SUM_INTO(sum, err, s0[l]);
            KRUM_TWO_SUM_INTO(sum, err, s1[l]);
            KRUM_TWO_SUM_INTO(sum, err, s2[l]);
            KRUM_TWO_SUM_INTO(sum, err, s3[l]);
            err += (c0[l] + c1[l]) + (c2[l] + c3[l]);
        }
        S[e] = sum;
        C[e] = err;
    }
}

KTARGET static void KFN(dd_entries)(const float *X, int64_t stride, const int64_t *rows, int64_t r,
                                    const int64_t *entries, int64_t count, int64_t col0, int64_t col1,
                                    int64_t block, double *wide, double *S, double *C)
{
    for (int64_t c0 = col0; c0 < col1; c0 += block) {
        int64_t cols = col1 - c0 < block ? col1 - c0 : block;
        int64_t width = (cols + 4 * DW - 1) / (4 * DW) * (4 * DW);
        KFN(dd_widen)(X, stride, rows, r, c0, cols, width, wide);
        KFN(dd_block)(wide, width, entries, count, S, C);
    }
}
