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
 * it and decides the canonical value, rows.py): 8 lanes of BLOCK / 8 terms each, combined pairwise,
 * block sums in groups of GROUP, group sums in order. Returns the depth, or -1 when out of memory.
 * Single-threaded; the caller splits columns over its threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "isa.h"

#define BLOCK 1024  /* columns per block: 64 rows of it stay in L2 between the two uses */
#define LANES 8
#define GROUP 128   /* block sums per group sum */

static inline __attribute__((always_inline)) void point_block(const float *X, int64_t n, int64_t stride,
                                                              const double *w, const int64_t *used, int64_t count,
                                                              const float *centre, double keep, int64_t c0,
                                                              int64_t width, float *point, double *z)
{
    /* LANES columns at a time, the rows' products added in registers in increasing row order */
    int64_t j = 0;
    for (; j + LANES <= width; j += LANES) {
        double acc[LANES] = {0};
        for (int64_t u = 0; u < count; u++) {
            const float *x = X + used[u] * stride + c0 + j;
            const double wi = w[used[u]];
            for (int k = 0; k < LANES; k++) {
                double product = wi * (double)x[k];
                acc[k] = acc[k] + product;
            }
        }
        if (centre != NULL && keep != 0.0)
            for (int k = 0; k < LANES; k++) {
                double product = keep * (double)centre[c0 + j + k];
                acc[k] = acc[k] + product;
            }
        for (int k = 0; k < LANES; k++)
            point[c0 + j + k] = (float)acc[k];
    }
    for (; j < width; j++) {
        double acc = 0.0;
        for (int64_t u = 0; u < count; u++) {
            double product = w[used[u]] * (double)X[used[u] * stride + c0 + j];
            acc = acc + product;
        }
        if (centre != NULL && keep != 0.0) {
            double product = keep * (double)centre[c0 + j];
            acc = acc + product;
        }
        point[c0 + j] = (float)acc;
    }
    (void)n;
}

static inline __attribute__((always_inline)) double row_block_sum(const float *x, const double *p, int64_t width)
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
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
        point_block(X, n, stride, w, used, count, centre, keep, c0, width, point, z);                     \
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
    /* depth: a lane's BLOCK / LANES terms, 3 pairwise sums, GROUP blocks, the groups in order */         \
    return BLOCK / LANES + 3 + GROUP + groups;

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
#endif

int64_t krum_point_pass(const float *X, int64_t n, int64_t stride, const double *w, const float *centre, double keep,
                        int64_t col0, int64_t col1, float *point, double *sums)
{
#if KRUM_X86
    if (krum_isa_selected() >= KRUM_ISA_AVX2)
        return point_pass_avx2(X, n, stride, w, centre, keep, col0, col1, point, sums);
#endif
    return point_pass_generic(X, n, stride, w, centre, keep, col0, col1, point, sums);
}
