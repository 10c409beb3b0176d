/* One pass over the rows for the iterative rules (geometric median, centred clipping): the compiled
 * twin of aggregators/rows.py block_pass, same arithmetic step for step.
 *
 * krum_point_pass: over columns [col0, col1) of X (n rows of float32, row stride in elements):
 *   point_j = (float)(((0 + w_a x_aj) + w_b x_bj) + ... + keep * centre_j)
 *             float64, rows with a non-zero weight in increasing order, one rounding per product and
 *             per sum (no FMA: -ffp-contract=off), as NumPy's z = z + w * x;
 *   sums_i  = sum_j t_ij, t_ij = ((double)x_ij - (double)point_j)^2 (when sums is not NULL),
 *             accumulated while the block is in cache: the rows are read from memory once.
 * The t_ij are summed in a tree whose depth the call returns (the caller bounds the rounding with
 * it and decides the canonical value, rows.py): LANES lanes of BLOCK / LANES terms each, combined
 * pairwise, block sums in groups of GROUP, group sums in order. Returns the depth, or -1 when out of
 * memory. The arithmetic is float64 without FMA: on 2 cores the pass is bound by its float64
 * operations (about 7 per 8 values), not by the read of the rows (docs/performance.md).
 * Single-threaded; the caller splits columns over its threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "isa.h"

#define BLOCK 1024  /* columns per block: 64 rows of it stay in L2 between the two uses */
#define LANES 32    /* independent float64 sums per row: enough chains to hide the add latency */
#define LANE_DEPTH 5 /* log2(LANES): the pairwise combination of the lanes */
#define GROUP 128   /* block sums per group sum */

/* z[0..width) += w_0 x_0 + ... + w_{R-1} x_{R-1} in float64, one rounding per product and per sum,
 * the rows' terms added to each column one after another in the order given: the caller passes the
 * rows in increasing order, so each column's sum is the same chain of roundings as NumPy's
 * z = z + w * x row by row. R rows stream together (the hardware prefetcher follows a few streams,
 * not 64), z stays in L1 and is loaded and stored once per R rows. */
#define ROWS_AT_ONCE 8
static inline __attribute__((always_inline)) void add_weighted_rows(double *restrict z, const float *const *x,
                                                                    const double *wr, int rows, int64_t width)
{
    if (rows == ROWS_AT_ONCE) {   /* a constant trip count: the r loop unrolls, the j loop vectorizes */
        for (int64_t j = 0; j < width; j++) {
            double s = z[j];
            for (int r = 0; r < ROWS_AT_ONCE; r++) {
                double product = wr[r] * (double)x[r][j];
                s = s + product;
            }
            z[j] = s;
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        const float *restrict xr = x[r];
        const double wv = wr[r];
        for (int64_t j = 0; j < width; j++) {
            double product = wv * (double)xr[j];
            z[j] = z[j] + product;
        }
    }
}

static inline __attribute__((always_inline)) double row_block_sum(const float *restrict x,
                                                                  const double *restrict p, int64_t width)
{
    double acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= width; j += LANES)
        for (int k = 0; k < LANES; k++) {
            double diff = (double)x[j + k] - p[j + k];
            acc[k] += diff * diff;
        }
    for (int k = 0; j < width; j++, k++) {
        double diff = (double)x[j] - p[j];
        acc[k] += diff * diff;
    }
    for (int half = LANES / 2; half >= 1; half /= 2)   /* pairwise: LANE_DEPTH levels */
        for (int k = 0; k < half; k++)
            acc[k] = acc[k] + acc[k + half];
    return acc[0];
}

#define POINT_PASS_BODY                                                                                   \
    int64_t *used = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));                                    \
    double *z = malloc(sizeof(double) * BLOCK);                                                           \
    double *group = sums != NULL ? calloc((size_t)(n > 0 ? n : 1), sizeof(double)) : NULL;                \
    if (used == NULL || z == NULL || (sums != NULL && group == NULL)) {                                   \
        free(used); free(z); free(group);                                                                 \
        return -1;                                                                                        \
    }                                                                                                     \
    int64_t count = 0;                                                                                    \
    for (int64_t i = 0; i < n; i++)                                                                       \
        if (w[i] != 0.0)                                                                                  \
            used[count++] = i;                                                                            \
    if (sums != NULL)                                                                                     \
        for (int64_t i = 0; i < n; i++)                                                                   \
            sums[i] = 0.0;                                                                                \
    int64_t blocks = 0, groups = 0;                                                                       \
    for (int64_t c0 = col0; c0 < col1; c0 += BLOCK) {                                                     \
        int64_t width = col1 - c0 < BLOCK ? col1 - c0 : BLOCK;                                            \
        for (int64_t j = 0; j < width; j++)                                                               \
            z[j] = 0.0;                                                                                   \
        for (int64_t u = 0; u < count; u += ROWS_AT_ONCE) {                                                \
            const float *x[ROWS_AT_ONCE];                                                                 \
            double wr[ROWS_AT_ONCE];                                                                      \
            int rows = count - u < ROWS_AT_ONCE ? (int)(count - u) : ROWS_AT_ONCE;                        \
            for (int r = 0; r < rows; r++) {                                                              \
                x[r] = X + used[u + r] * stride + c0;                                                     \
                wr[r] = w[used[u + r]];                                                                   \
            }                                                                                             \
            add_weighted_rows(z, x, wr, rows, width);                                                     \
        }                                                                                                 \
        if (centre != NULL && keep != 0.0)                                                                \
            for (int64_t j = 0; j < width; j++) {                                                         \
                double product = keep * (double)centre[c0 + j];                                           \
                z[j] = z[j] + product;                                                                    \
            }                                                                                             \
        for (int64_t j = 0; j < width; j++)                                                               \
            point[c0 + j] = (float)z[j];                                                                  \
        if (sums == NULL)                                                                                 \
            continue;                                                                                     \
        for (int64_t j = 0; j < width; j++) /* the point's block in float64 once, for every row */        \
            z[j] = (double)point[c0 + j];                                                                 \
        for (int64_t i = 0; i < n; i++)                                                                   \
            group[i] += row_block_sum(X + i * stride + c0, z, width);                                     \
        if (++blocks == GROUP) {                                                                          \
            for (int64_t i = 0; i < n; i++) {                                                             \
                sums[i] += group[i];                                                                      \
                group[i] = 0.0;                                                                           \
            }                                                                                             \
            blocks = 0;                                                                                   \
            groups++;                                                                                     \
        }                                                                                                 \
    }                                                                                                     \
    if (sums != NULL && blocks > 0) {                                                                     \
        for (int64_t i = 0; i < n; i++)                                                                   \
            sums[i] += group[i];                                                                          \
        groups++;                                                                                         \
    }                                                                                                     \
    free(used); free(z); free(group);                                                                     \
    /* depth: a lane's BLOCK / LANES terms, the lanes pairwise, GROUP blocks, the groups in order */      \
    return BLOCK / LANES + LANE_DEPTH + GROUP + groups;

static int64_t point_pass_generic(const float *X, int64_t n, int64_t stride, const double *w, const float *centre,
                                  double keep, int64_t col0, int64_t col1, float *point, double *sums)
{
    POINT_PASS_BODY
}

#if KRUM_X86
KRUM_TARGET_AVX2 static int64_t point_pass_avx2(const float *X, int64_t n, int64_t stride, const double *w,
                                                const float *centre, double keep, int64_t col0, int64_t col1,
                                                float *point, double *sums)
{
    POINT_PASS_BODY
}

KRUM_TARGET_AVX512 static int64_t point_pass_avx512(const float *X, int64_t n, int64_t stride, const double *w,
                                                    const float *centre, double keep, int64_t col0, int64_t col1,
                                                    float *point, double *sums)
{
    POINT_PASS_BODY
}
#endif

int64_t krum_point_pass(const float *X, int64_t n, int64_t stride, const double *w, const float *centre, double keep,
                        int64_t col0, int64_t col1, float *point, double *sums)
{
#if KRUM_X86
    if (krum_isa_selected() >= KRUM_ISA_AVX512)
        return point_pass_avx512(X, n, stride, w, centre, keep, col0, col1, point, sums);
    if (krum_isa_selected() >= KRUM_ISA_AVX2)
        return point_pass_avx2(X, n, stride, w, centre, keep, col0, col1, point, sums);
#endif
    return point_pass_generic(X, n, stride, w, centre, keep, col0, col1, point, sums);
}
