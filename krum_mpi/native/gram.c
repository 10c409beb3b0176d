/* float32 centred Gram product behind the pairwise squared distances (aggregators/distances.py).
 *
 * krum_gram_f32 adds, for the columns [col0, col1) of the n rows of X (row stride in elements),
 * the Gram of the rows centred on the reference row to a float64 (n x n) sum, block by block:
 *   1. centre a block of B columns into a cache-resident float32 scratch (n x B, zero padded);
 *      for n <= KRUM_GRAM_INPLACE_MAX_N and a block of whole vectors, skip this: the tiles read X
 *      in place and centre in registers (block_gram_x);
 *   2. its upper-triangle Gram in register tiles, float32 lanes (B / VW products per lane, then a
 *      log2(VW) tree: the per-block error stays under the u sqrt(B) model of GramSum.error());
 *      meanwhile the block after next of X is prefetched, so memory streams while the FMAs run;
 *   3. the block Gram goes into the float64 sum, its squared diagonal into norm_sq.
 * Non-finite rows (same meaning as the NumPy path): a row whose block diagonal is NaN/Inf and that
 * holds a NaN/Inf in X is marked finite[i] = 0, its entries of this block dropped, and from then
 * on it is centred to zeros (a NaN row in every block costs one check, not a slow path). When the
 * reference row is not finite in a block, or a finite row overflowed float32, the function stops
 * at that block and returns its first column: the caller does that block in float64 and calls
 * again from the next block. Returns col1 when every block is done.
 * Single-threaded; the caller splits columns over its threads. The input is never copied.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"

#define KRUM_GRAM_ALIGN 16 /* floats: scratch rows are padded to 64 bytes, the widest vector */
#define KRUM_GRAM_PAD_ROWS 3 /* zero rows after the n scratch rows: edge tiles read them (TS - 1 at most) */

/* floats of work buffer that hold the n + KRUM_GRAM_PAD_ROWS row pointers of a block, rounded
 * up so that the scratch after them stays 64-byte aligned */
static int64_t krum_gram_ptr_floats(int64_t n)
{
    int64_t f = (n + KRUM_GRAM_PAD_ROWS) * (int64_t)(sizeof(void *) / sizeof(float));
    return (f + KRUM_GRAM_ALIGN - 1) / KRUM_GRAM_ALIGN * KRUM_GRAM_ALIGN;
}

/* floats of work buffer the caller provides for n rows and blocks of `block` columns */
int64_t krum_gram_work_size(int64_t n, int64_t block)
{
    int64_t bp = (block + KRUM_GRAM_ALIGN - 1) / KRUM_GRAM_ALIGN * KRUM_GRAM_ALIGN;
    return krum_gram_ptr_floats(n) + (n + KRUM_GRAM_PAD_ROWS) * bp + n * n + KRUM_GRAM_ALIGN;
}

#define KFN(name) name##_generic
#define VW 4
#define TS 3
#define KTARGET
#include "gram_impl.h"
#undef KFN
#undef VW
#undef TS
#undef KTARGET

#if KRUM_X86
#define KFN(name) name##_avx2
#define VW 8
#define TS 3
#define KTARGET KRUM_TARGET_AVX2
#include "gram_impl.h"
#undef KFN
#undef VW
#undef TS
#undef KTARGET

#define KFN(name) name##_avx512
#define VW 16
#define TS 4
#define KTARGET KRUM_TARGET_AVX512
#include "gram_impl.h"
#undef KFN
#undef VW
#undef TS
#undef KTARGET
#endif

typedef void (*centre_fn)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          const uint8_t *, float *);
typedef void (*block_fn)(const float *, int64_t, int64_t, float *, const float *, int64_t, int64_t,
                         int64_t);
typedef void (*block_x_fn)(const float *const *, const float *, int64_t, int64_t, float *,
                           const float *, int64_t, int64_t, int64_t);

/* rows up to which whole-vector blocks are read in place (block_gram_x), centred in registers;
 * measured on one core: n = 16 25.5 -> 21.0 ms (5e6 columns), n = 24 14.2 -> 10.8 and n = 32
 * 19.4 -> 18.0 ms (1.25e6), but n = 64 65 -> 70 ms, where the scratch is loaded n / TS times
 * per centring */
#define KRUM_GRAM_INPLACE_MAX_N 32

static int row_is_finite(const float *x, int64_t len)
{
    for (int64_t k = 0; k < len; k++)
        if (!isfinite(x[k]))
            return 0;
    return 1;
}

int64_t krum_gram_f32(const float *X, int64_t n, int64_t stride, int64_t col0, int64_t col1,
                      int64_t ref, int64_t block, double *gram, double *norm_sq, uint8_t *finite,
                      float *work)
{
    centre_fn centre = centre_generic;
    block_fn block_gram = block_gram_generic;
    block_x_fn block_gram_x = block_gram_x_generic;
    int64_t vw = 4; /* the variant's vector width: blocks of whole vectors are read in place */
#if KRUM_X86
    int isa = krum_isa_selected();
    if (isa == KRUM_ISA_AVX512) {
        centre = centre_avx512;
        block_gram = block_gram_avx512;
        block_gram_x = block_gram_x_avx512;
        vw = 16;
    } else if (isa == KRUM_ISA_AVX2) {
        centre = centre_avx2;
        block_gram = block_gram_avx2;
        block_gram_x = block_gram_x_avx2;
        vw = 8;
    }
#endif
    int64_t bp = (block + KRUM_GRAM_ALIGN - 1) / KRUM_GRAM_ALIGN * KRUM_GRAM_ALIGN;
    const float **rows = (const float **)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *s = (float *)rows + krum_gram_ptr_floats(n);
    float *bg = s + (n + KRUM_GRAM_PAD_ROWS) * bp;

    int64_t pad_lp = -1;
    for (int64_t c = col0; c < col1; c += block) {
        int64_t len = col1 - c < block ? col1 - c : block;
        /* the block after next is prefetched while this one is multiplied: prefetching only the
         * next one left its last lines in flight when the centring pass read them (measured 33.7
         * -> 26.2 ms at n = 16, 285 -> 260 ms at n = 64 for 5e6 columns on one core); three
         * blocks of X and the scratch stay within L2 */
        int64_t pc = c + len + block;
        int64_t plen = pc < col1 ? (col1 - pc < block ? col1 - pc : block) : 0;
        if (len % vw == 0 && n <= KRUM_GRAM_INPLACE_MAX_N) {
            /* whole vectors: the tiles read X in place and centre in registers (a separate
             * centring pass, written to scratch and read back, took 10 of 25.5 ms at n = 16 for
             * 5e6 columns on one core). A row marked non-finite and the padding rows point at
             * the reference row: r - r = 0, the zero row the scratch path gives them (or NaN if
             * the reference is not finite here, and then this block is handed back anyway). */
            const float *r = X + ref * stride + c;
            for (int64_t i = 0; i < n; i++)
                rows[i] = finite[i] ? X + i * stride + c : r;
            for (int64_t i = n; i < n + KRUM_GRAM_PAD_ROWS; i++)
                rows[i] = r;
            block_gram_x(rows, r, n, len, bg, X, stride, pc, plen);
        } else {
            /* larger n, or a ragged block: centred into scratch, zero padded to whole vectors */
            int64_t lp = (len + KRUM_GRAM_ALIGN - 1) / KRUM_GRAM_ALIGN * KRUM_GRAM_ALIGN;
            if (lp != pad_lp) { /* the zero rows under the last tile row, at this row pitch */
                memset(s + n * lp, 0, (size_t)(KRUM_GRAM_PAD_ROWS * lp) * sizeof(float));
                pad_lp = lp;
            }
            centre(X, n, stride, c, len, lp, ref, finite, s);
            /* rows are lp apart in scratch for this block: a short last block computes no
             * padding */
            block_gram(s, n, lp, bg, X, stride, pc, plen);
        }

        /* the rare case first: look for non-finite diagonals, decide before changing anything */
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            if (isfinite(bg[i * n + i]))
                continue;
            if (i == ref || row_is_finite(X + i * stride + c, len))
                return c; /* reference not finite here, or float32 overflow: float64 block */
            bad = 1;
        }
        if (bad)
            for (int64_t i = 0; i < n; i++)
                if (!isfinite(bg[i * n + i])) {
                    finite[i] = 0;
                    for (int64_t j = 0; j < n; j++) /* its row and column of the upper triangle */
                        bg[(i < j ? i : j) * n + (i < j ? j : i)] = 0.0f;
                }

        for (int64_t i = 0; i < n; i++) {
            double di = bg[i * n + i];
            gram[i * n + i] += di;
            norm_sq[i] += di * di;
            for (int64_t j = i + 1; j < n; j++) {
                double g = bg[i * n + j];
                gram[i * n + j] += g;
                gram[j * n + i] += g;
            }
        }
    }
    return col1;
}

/* the variant krum_gram_f32 runs now (KRUM_MPI_ISA caps it) */
const char *krum_gram_isa(void) { return krum_isa_name(krum_isa_selected()); }
