/* Weighted row combinations (out = mixing @ X) and MDA's minimum-diameter subset search, the
 * compiled twins of aggregators/rowops.py (combine_rows_many) and aggregators/mda.py
 * (min_diameter_subset).
 *
 * krum_combine_rows: out (k x columns [col0, col1)) float32 = mixing (k x n, float64) @ X, X float32
 * with contiguous rows (row stride in elements, never copied). Same arithmetic idea as NumPy's path:
 *   - only rows with a non-zero weight are read (Multi-Krum reads its m rows, not n);
 *   - rows are centred on an anchor row and summed in float32, so a common mean far above the spread
 *     costs no precision: sum_i w_i x_i = sum_i w_i (x_i - x_a) + (sum_i w_i) x_a; the anchor is the
 *     row with the largest |weight| (of the output; of the tile, summed over its outputs), first on
 *     ties, so that a huge row with a small weight never swamps the others;
 *   - outputs go in register tiles of up to 8 (a dense mixing such as NNM's reads each X vector once
 *     per tile, not once per output), over column blocks that stay in L2 between tiles;
 *   - non-finite results are sorted out per element, exactly as the NumPy path does: an output that
 *     weights a NaN/Inf input at a column is NaN there; one whose inputs are finite but whose float32
 *     sum overflowed is recomputed in float64 and cast (NumPy redoes such columns in float64). A tile
 *     shares its rows, so 0 * NaN can spoil an output that gives a non-finite row no weight: such an
 *     element is redone over its output's own rows only (rare: needs a non-finite input), element
 *     by element, so that no column depends on its neighbours (sharded blocks give the same values).
 * Single-threaded; the caller splits columns over its threads.
 *
 * krum_mda_search: the depth-first lexicographic enumeration of min_diameter_subset, step for step
 * (same order, same pruning test, same tie rule), on the float64 (n x n) distance matrix.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

#define ROWS_BLOCK 512         /* columns per block: 64 rows of it (128 KiB) stay in L2 between tiles */
#define ROWS_BLOCK_SINGLE 8192 /* columns per block for one output: 8 KiB runs of each row (measured) */
#define ROWS_TILE 8    /* most outputs per register tile */

/* Per call: each output's rows with a non-zero weight, and the tiles of consecutive outputs. */
struct rows_plan {
    const float *X;
    int64_t stride;
    int64_t k;
    const int64_t *count;  /* [k] non-zero weights of output j */
    int64_t *const *idx;   /* [k][count] their rows, increasing but for the anchor (largest |weight|) first */
    float *const *w32;     /* [k][count] float32 weights (the fast sums) */
    double *const *w64;    /* [k][count] float64 weights (the overflow recompute) */
    const float *sum32;    /* [k] float32 of the float64 weight sum */
    int64_t tiles;
    const int64_t *tile_j0, *tile_T, *tile_u; /* first output, outputs, rows of the union */
    const float *const *const *tile_rows;     /* [tile][u] row pointers, increasing rows */
    float *const *tile_w;                      /* [tile][u * T] weights, zeros outside a row set */
};

/* One output element the careful way, NumPy's semantics: the float32 centred sum when finite, NaN
 * when a contributing input is NaN/Inf, else (float32 overflow) the float64 sum cast to float32. */
static float rows_element(const struct rows_plan *p, int64_t j, int64_t col)
{
    const int64_t c = p->count[j], *idx = p->idx[j];
    float a = p->X[idx[0] * p->stride + col], acc = 0.0f;
    for (int64_t r = 0; r < c; r++)
        acc += p->w32[j][r] * (p->X[idx[r] * p->stride + col] - a);
    float res = acc + p->sum32[j] * a;
    if (isfinite(res))
        return res;
    double sum = 0.0;
    for (int64_t r = 0; r < c; r++) {
        float x = p->X[idx[r] * p->stride + col];
        if (!isfinite(x))
            return NAN;
        sum += p->w64[j][r] * (double)x;
    }
    return (float)sum;
}

#define KFN(name) name##_generic
#define VW 4
#define KTARGET
#include "rows_impl.h"
#undef KFN
#undef VW
#undef KTARGET

#if KRUM_X86
#define KFN(name) name##_avx2
#define VW 8
#define KTARGET KRUM_TARGET_AVX2
#include "rows_impl.h"
#undef KFN
#undef VW
#undef KTARGET

#define KFN(name) name##_avx512
#define VW 16
#define KTARGET KRUM_TARGET_AVX512
#include "rows_impl.h"
#undef KFN
#undef VW
#undef KTARGET
#endif

/* out[j * out_stride + col] for j < k, col in [col0, col1). Returns 0, or -1 when out of memory
 * (nothing written) or when mixing has no non-zero weight. */
int krum_combine_rows(const float *X, int64_t n, int64_t stride, const double *mixing, int64_t k,
                      int64_t col0, int64_t col1, float *out, int64_t out_stride)
{
    if (col1 <= col0 || k <= 0)
        return 0;
    int64_t tiles = k; /* at most one tile per output */
    /* one allocation: per output k*n idx/w32/w64, per tile n row pointers and n*T weights */
    size_t bytes = (size_t)k * n * (sizeof(int64_t) + sizeof(float) + sizeof(double)) +
                   (size_t)k * (3 * sizeof(void *) + sizeof(int64_t) + sizeof(float)) +
                   (size_t)tiles * (4 * sizeof(int64_t) + 2 * sizeof(void *)) +
                   (size_t)tiles * n * sizeof(float *) + (size_t)k * n * sizeof(float) + 64;
    char *mem = malloc(bytes), *at = mem;
    if (mem == NULL)
        return -1;
#define TAKE(type, count) ((type *)(at += (count) * sizeof(type), at - (count) * sizeof(type)))
    /* 8-byte members first, so every array stays aligned */
    int64_t *idx_all = TAKE(int64_t, k * n), *count = TAKE(int64_t, k);
    double *w64_all = TAKE(double, k * n);
    int64_t **idx = TAKE(int64_t *, k);
    float **w32 = TAKE(float *, k);
    double **w64 = TAKE(double *, k);
    int64_t *tile_j0 = TAKE(int64_t, tiles), *tile_T = TAKE(int64_t, tiles), *tile_u = TAKE(int64_t, tiles);
    const float ***tile_rows = TAKE(const float **, tiles);
    float **tile_w = TAKE(float *, tiles);
    const float **rows_all = TAKE(const float *, tiles * n);
    float *w32_all = TAKE(float, k * n), *sum32 = TAKE(float, k), *tw_all = TAKE(float, k * n);
#undef TAKE

    int any = 0;
    for (int64_t j = 0; j < k; j++) {
        const double *m = mixing + j * n;
        double s = 0.0;
        idx[j] = idx_all + j * n;
        w32[j] = w32_all + j * n;
        w64[j] = w64_all + j * n;
        count[j] = 0;
        for (int64_t i = 0; i < n; i++) {
            s += m[i]; /* NumPy's mixing.sum(axis=1) is pairwise; a rounding apart at most */
            if (m[i] != 0.0) {
                idx[j][count[j]] = i;
                w32[j][count[j]] = (float)m[i];
                w64[j][count[j]] = m[i];
                count[j]++;
            }
        }
        sum32[j] = (float)s;
        any |= count[j] > 0;
        /* anchor (position 0) = the row with the largest |weight|, first on ties: centring on a row
         * that carries little weight (a huge row next to ordinary ones) would cancel the others */
        int64_t best = 0;
        for (int64_t r = 1; r < count[j]; r++)
            if (fabs(w64[j][r]) > fabs(w64[j][best]))
                best = r;
        if (best) {
            int64_t ti = idx[j][0]; idx[j][0] = idx[j][best]; idx[j][best] = ti;
            float tf = w32[j][0]; w32[j][0] = w32[j][best]; w32[j][best] = tf;
            double td = w64[j][0]; w64[j][0] = w64[j][best]; w64[j][best] = td;
        }
    }
    if (!any) {
        free(mem);
        return -1;
    }

    /* Tiles of 8 consecutive outputs, then 4, then single ones; outputs without weights are zeros
     * and skip the tiles (a tile's rows are the union of its outputs' rows). */
    int64_t nt = 0, used_rows = 0, used_w = 0;
    for (int64_t j = 0; j < k;) {
        if (count[j] == 0) {
            for (int64_t col = col0; col < col1; col++)
                out[j * out_stride + col] = 0.0f;
            j++;
            continue;
        }
        int64_t T = k - j >= ROWS_TILE ? ROWS_TILE : k - j >= 4 ? 4 : 1, u = 0;
        tile_j0[nt] = j;
        tile_T[nt] = T;
        tile_rows[nt] = rows_all + used_rows;
        tile_w[nt] = tw_all + used_w;
        /* the tile's anchor: its row with the largest summed |weight| over the tile, first on ties */
        int64_t best = 0;
        double best_w = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double w = 0.0;
            for (int64_t t = 0; t < T; t++)
                w += fabs(mixing[(j + t) * n + i]);
            if (w == 0.0)
                continue;
            if (w > best_w) {
                best_w = w;
                best = u;
            }
            tile_rows[nt][u] = X + i * stride;
            for (int64_t t = 0; t < T; t++)
                tile_w[nt][u * T + t] = (float)mixing[(j + t) * n + i];
            u++;
        }
        if (best) {
            const float *tr = tile_rows[nt][0];
            tile_rows[nt][0] = tile_rows[nt][best];
            tile_rows[nt][best] = tr;
            for (int64_t t = 0; t < T; t++) {
                float tw = tile_w[nt][t];
                tile_w[nt][t] = tile_w[nt][best * T + t];
                tile_w[nt][best * T + t] = tw;
            }
        }
        tile_u[nt] = u;
        used_rows += u;
        used_w += u * T;
        nt++;
        j += T;
    }

    struct rows_plan p = {X, stride, k, count, idx, w32, w64, sum32, nt, tile_j0, tile_T, tile_u,
                          (const float *const *const *)tile_rows, tile_w};
    int isa = krum_isa_selected();
#if KRUM_X86
    if (isa == KRUM_ISA_AVX512)
        rows_combine_avx512(&p, col0, col1, out, out_stride);
    else if (isa == KRUM_ISA_AVX2)
        rows_combine_avx2(&p, col0, col1, out, out_stride);
    else
#endif
        rows_combine_generic(&p, col0, col1, out, out_stride);
    (void)isa;
    free(mem);
    return 0;
}

/* ---- MDA: minimum-diameter subset search ---------------------------------------------------- */

struct mda_state {
    const double *dist;
    int64_t n, size;
    double tol;
    int64_t *chosen, *best;
    double best_diameter;
    int have_best;
};

/* One level of min_diameter_subset's search(chosen, diameter, nxt), the same operations in the
 * same order. grown = max(diameter, dist[i, chosen].max()): NumPy's max turns NaN if an entry is
 * NaN, and Python's max(a, b) keeps a unless b > a, so a NaN maximum leaves the diameter as it is. */
static void mda_search(struct mda_state *s, int64_t len, double diameter, int64_t nxt)
{
    if (len == s->size) {
        s->best_diameter = diameter;
        memcpy(s->best, s->chosen, (size_t)len * sizeof(int64_t));
        s->have_best = 1;
        return;
    }
    for (int64_t i = nxt; i < s->n - (s->size - len) + 1; i++) {
        double grown = 0.0;
        if (len > 0) {
            const double *row = s->dist + i * s->n;
            double m = row[s->chosen[0]];
            for (int64_t c = 1; c < len && !isnan(m); c++) {
                double v = row[s->chosen[c]];
                m = isnan(v) || v > m ? v : m;
            }
            grown = m > diameter ? m : diameter;
        }
        if (s->have_best && grown >= s->best_diameter - s->tol)
            continue; /* cannot beat the best subset found so far by more than the error */
        s->chosen[len] = i;
        mda_search(s, len + 1, grown, i + 1);
    }
}

/* The size-subset of min_diameter_subset into best[0..size) (increasing). Returns 1, or 0 when no
 * subset was found (size > n) and -1 when out of memory. */
int krum_mda_search(const double *dist, int64_t n, int64_t size, double tol, int64_t *best)
{
    if (size < 0)
        return 0;
    int64_t *chosen = malloc((size_t)(size + 1) * sizeof(int64_t));
    if (chosen == NULL)
        return -1;
    struct mda_state s = {dist, n, size, tol, chosen, best, INFINITY, 0};
    mda_search(&s, 0, 0.0, 0);
    free(chosen);
    return s.have_best;
}
