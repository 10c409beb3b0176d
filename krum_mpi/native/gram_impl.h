/* The loop body of gram.c, included once per instruction set. The includer defines
 *   KFN(name)  the name of a function in this variant (name##_avx512, ...)
 *   VW         float lanes per vector (16, 8, 4)
 *   KTARGET    the target attribute of the variant (empty for generic)
 *   TS         rows per side of a square register tile: TS^2 accumulators + 2 TS loads must fit
 *              the vector registers (32 with AVX-512, 16 with AVX2/SSE)
 * Scratch rows are KRUM_GRAM_ALIGN-float aligned and padded with zeros to a whole number of
 * vectors; X rows may start anywhere (unaligned loads). */

typedef float KFN(vf) __attribute__((vector_size(VW * 4)));
typedef float KFN(vfu) __attribute__((vector_size(VW * 4), aligned(4)));  /* unaligned X loads */

typedef int32_t KFN(vi) __attribute__((vector_size(VW * 4)));

/* Sum of the lanes of v: add the two halves until 4 lanes are left, then (c0 + c2) + (c1 + c3). A
 * tree of depth log2(VW): as exact as any horizontal sum. Written with shuffles of the whole
 * vector (GCC narrows them to extracts): taking v's address (memcpy of its halves) made GCC keep
 * the tile's accumulators in memory. */
KTARGET static inline __attribute__((always_inline)) float KFN(hsum)(KFN(vf) v)
{
#if VW == 16
    v += KRUM_SHUFFLE(v, KFN(vi), 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
#if VW == 16
    v += KRUM_SHUFFLE(v, KFN(vi), 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
#elif VW == 8
    v += KRUM_SHUFFLE(v, KFN(vi), 4, 5, 6, 7, 0, 1, 2, 3);
#endif
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* scratch row i = X row i - reference row over [c, c + len), zeros up to bp; rows marked
 * non-finite are all zeros (they would spread NaN into every entry of the block). */
KTARGET static void KFN(centre)(const float *X, int64_t n, int64_t stride, int64_t c, int64_t len,
                                int64_t bp, int64_t ref, const uint8_t *finite, float *s)
{
    const float *r = X + ref * stride + c;
    for (int64_t i = 0; i < n; i++) {
        float *out = s + i * bp;
        int64_t k = 0;
        if (finite[i]) {
            const float *x = X + i * stride + c;
            for (; k + VW <= len; k += VW)
                *(KFN(vf) *)(out + k) = *(const KFN(vfu) *)(x + k) - *(const KFN(vfu) *)(r + k);
            for (; k < len; k++)
                out[k] = x[k] - r[k];
        }
        for (; k < bp; k++)
            out[k] = 0.0f;
    }
}

/* The TS x TS tile written out: GCC kept an array of accumulators in memory (a load and a store
 * around every FMA), so the tile is spelled with one variable per accumulator. */
#if TS == 4
#define KRUM_EACH_U(F) F(0) F(1) F(2) F(3)
#define KRUM_EACH_UV(F) F(0, 0) F(0, 1) F(0, 2) F(0, 3) F(1, 0) F(1, 1) F(1, 2) F(1, 3) \
                        F(2, 0) F(2, 1) F(2, 2) F(2, 3) F(3, 0) F(3, 1) F(3, 2) F(3, 3)
#elif TS == 3
#define KRUM_EACH_U(F) F(0) F(1) F(2)
#define KRUM_EACH_UV(F) F(0, 0) F(0, 1) F(0, 2) F(1, 0) F(1, 1) F(1, 2) F(2, 0) F(2, 1) F(2, 2)
#else
#error "gram_impl.h: TS must be 3 or 4"
#endif
#define KRUM_ACC_ZERO(u, v) KFN(vf) c##u##v = {0};
#define KRUM_LOAD(u) KFN(vf) a##u = *(const KFN(vf) *)(a + u * bp + k), \
                             b##u = *(const KFN(vf) *)(b + u * bp + k);
#define KRUM_FMA(u, v) c##u##v += a##u * b##v;
#define KRUM_STORE(u, v) \
    if (TS * ti + u < n && TS * tj + v < n && TS * ti + u <= TS * tj + v) \
        bg[(TS * ti + u) * n + TS * tj + v] = KFN(hsum)(c##u##v);

/* Upper triangle of the Gram of the n centred rows (length bp) into bg (n x n float32), in TS x TS
 * register tiles: TS^2 accumulators, 2 TS loads per TS^2 FMAs. An edge tile reads the zero rows
 * that follow the n scratch rows (KRUM_GRAM_PAD_ROWS) and its products past n are dropped. While
 * the tiles run, a later block of X (rows x [pc, pc + plen)) is prefetched, so its centring
 * pass reads from cache and the kernel streams memory while it computes. The prefetches go out in
 * small groups between runs of KRUM_GRAM_PF_STEPS k steps, not inside the FMA loop: there their
 * bookkeeping took the registers the tile needs. */
#ifndef KRUM_GRAM_PF_STEPS
#define KRUM_GRAM_PF_STEPS 4
#endif
/* The prefetch plan of one block: the n rows x plen columns of X at pc (the block after next) as
 * 64-byte lines, spread evenly over the tile runs of KRUM_GRAM_PF_STEPS vector steps each (cols:
 * the columns one tile pass covers); KRUM_PREFETCH_GROUP issues one run's share. Macros rather than
 * functions: the counters must stay in registers of the tile loop. */
#define KRUM_PREFETCH_PLAN(cols) \
    int64_t runs = (tiles * (tiles + 1) / 2) * ((cols / VW + KRUM_GRAM_PF_STEPS - 1) / KRUM_GRAM_PF_STEPS); \
    int64_t lines_per_row = (plen + 15) / 16; \
    int64_t lines = plen > 0 ? n * lines_per_row : 0; \
    int64_t per_run = runs > 0 ? (lines + runs - 1) / runs : 0; \
    int64_t pf_row = 0, pf_off = 0;
#define KRUM_PREFETCH_GROUP \
    for (int64_t p = 0; p < per_run && pf_row < n; p++) { \
        __builtin_prefetch(X + pf_row * stride + pc + pf_off * 16, 0, 2); \
        if (++pf_off == lines_per_row) { \
            pf_off = 0; \
            pf_row++; \
        } \
    }
/* The build turns FMA contraction off (isa.h); the products here want it (one rounding instead of
 * two, and twice the throughput) */
KRUM_CONTRACT_BEGIN
KTARGET KRUM_CONTRACT static void
KFN(block_gram)(const float *s, int64_t n, int64_t bp, float *bg, const float *X,
                int64_t stride, int64_t pc, int64_t plen)
{
    int64_t tiles = (n + TS - 1) / TS;
    KRUM_PREFETCH_PLAN(bp)

    for (int64_t ti = 0; ti < tiles; ti++) {
        const float *a = s + TS * ti * bp;  /* rows TS ti .. TS ti + TS - 1, bp apart */
        for (int64_t tj = ti; tj < tiles; tj++) {
            const float *b = s + TS * tj * bp;
            KRUM_EACH_UV(KRUM_ACC_ZERO)  /* one block: B / VW products per lane */
            for (int64_t k = 0; k < bp;) {
                int64_t kend = bp - k > KRUM_GRAM_PF_STEPS * VW ? k + KRUM_GRAM_PF_STEPS * VW : bp;
                for (; k < kend; k += VW) {
                    KRUM_EACH_U(KRUM_LOAD)
                    KRUM_EACH_UV(KRUM_FMA)
                }
                KRUM_PREFETCH_GROUP
            }
            KRUM_EACH_UV(KRUM_STORE)
        }
    }
}
/* the upper triangle of a diagonal tile (its rows are its columns): TS (TS + 1) / 2 products */
#if TS == 4
#define KRUM_EACH_UP(F) F(0, 0) F(0, 1) F(0, 2) F(0, 3) F(1, 1) F(1, 2) F(1, 3) F(2, 2) F(2, 3) F(3, 3)
#else
#define KRUM_EACH_UP(F) F(0, 0) F(0, 1) F(0, 2) F(1, 1) F(1, 2) F(2, 2)
#endif
/* a row of the tile, centred in registers: the same float32 subtraction as centre() */
#define KRUM_LOAD_A(u) KFN(vf) a##u = *(const KFN(vfu) *)(pa[u] + k) - vr;
#define KRUM_LOAD_B(u) KFN(vf) b##u = *(const KFN(vfu) *)(pb[u] + k) - vr;
#define KRUM_FMA_DIAG(u, v) c##u##v += a##u * a##v;

/* block_gram without the scratch, for small n: the same upper triangle, of the rows rows[i] - r
 * (length len, a multiple of VW) read in place from X and centred in registers (the same float32
 * subtraction as centre(); it runs on the FP add ports beside the FMAs, and nothing is written to
 * scratch and read back). rows has n + KRUM_GRAM_PAD_ROWS entries, the extra ones give zero rows
 * for the edge tiles. A diagonal tile does its upper triangle only (TS loads, TS (TS + 1) / 2
 * FMAs: at n = 16, 136 FMAs per vector step instead of 160). The prefetch is block_gram's.
 * At large n each row is loaded and centred once per tile it is in, n / TS times, instead of
 * once: there block_gram is faster (n = 64: 65 vs 70 ms for 1.25e6 columns on one core). */
KTARGET KRUM_CONTRACT static void
KFN(block_gram_x)(const float *const *rows, const float *r, int64_t n, int64_t len, float *bg,
                const float *X, int64_t stride, int64_t pc, int64_t plen)
{
    int64_t tiles = (n + TS - 1) / TS;
    KRUM_PREFETCH_PLAN(len)
    for (int64_t ti = 0; ti < tiles; ti++) {
        const float *const *pa = rows + TS * ti;
        {   /* the diagonal tile */
            int64_t tj = ti;
            KRUM_EACH_UV(KRUM_ACC_ZERO)  /* one block: len / VW products per lane */
            for (int64_t k = 0; k < len;) {
                int64_t kend = len - k > KRUM_GRAM_PF_STEPS * VW ? k + KRUM_GRAM_PF_STEPS * VW : len;
                for (; k < kend; k += VW) {
                    KFN(vf) vr = *(const KFN(vfu) *)(r + k);
                    KRUM_EACH_U(KRUM_LOAD_A)
                    KRUM_EACH_UP(KRUM_FMA_DIAG)
                }
                KRUM_PREFETCH_GROUP
            }
            KRUM_EACH_UV(KRUM_STORE)
        }
        for (int64_t tj = ti + 1; tj < tiles; tj++) {
            const float *const *pb = rows + TS * tj;
            KRUM_EACH_UV(KRUM_ACC_ZERO)
            for (int64_t k = 0; k < len;) {
                int64_t kend = len - k > KRUM_GRAM_PF_STEPS * VW ? k + KRUM_GRAM_PF_STEPS * VW : len;
                for (; k < kend; k += VW) {
                    KFN(vf) vr = *(const KFN(vfu) *)(r + k);
                    KRUM_EACH_U(KRUM_LOAD_A)
                    KRUM_EACH_U(KRUM_LOAD_B)
                    KRUM_EACH_UV(KRUM_FMA)
                }
                KRUM_PREFETCH_GROUP
            }
            KRUM_EACH_UV(KRUM_STORE)
        }
    }
}
KRUM_CONTRACT_END
#undef KRUM_EACH_U
#undef KRUM_EACH_UV
#undef KRUM_ACC_ZERO
#undef KRUM_LOAD
#undef KRUM_LOAD_A
#undef KRUM_LOAD_B
#undef KRUM_EACH_UP
#undef KRUM_FMA_DIAG
#undef KRUM_FMA
#undef KRUM_STORE
#undef KRUM_PREFETCH_PLAN
#undef KRUM_PREFETCH_GROUP
