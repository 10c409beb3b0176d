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

/* Sum of the lanes of v: add the two halves until 4 lanes are left (vector extract + add; the
 * memcpy's compile to register moves), then 3 scalar adds. A tree of depth log2(VW): as exact as
 * any horizontal sum. */
typedef float KFN(v4) __attribute__((vector_size(16)));
#if VW >= 8
typedef float KFN(v8) __attribute__((vector_size(32)));
#endif
KTARGET static inline __attribute__((always_inline)) float KFN(hsum)(KFN(vf) v)
{
#if VW == 16
    KFN(v8) a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (char *)&v + sizeof a, sizeof b);
    a += b;
#elif VW == 8
    KFN(v8) a = v;
#endif
#if VW >= 8
    KFN(v4) c, e;
    memcpy(&c, &a, sizeof c);
    memcpy(&e, (char *)&a + sizeof c, sizeof e);
    c += e;
#else
    KFN(v4) c = v;
#endif
    return (c[0] + c[2]) + (c[1] + c[3]);
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

/* Upper triangle of the Gram of the n centred rows (length bp) into bg (n x n float32), in TS x TS
 * register tiles: TS^2 accumulators, 2 TS loads per TS^2 FMAs. Rows past n in an edge tile point at
 * row 0 and their products are dropped (no padding rows: scratch stays n x bp). While the tiles
 * run, the next block of X (rows x [pc, pc + plen)) is prefetched, spread over the k steps, so
 * the next centring pass reads from cache and the kernel streams memory while it computes. */
/* -std=c11 turns FMA contraction off for the whole file; the products here want it (one rounding
 * instead of two, and twice the throughput) */
KTARGET __attribute__((optimize("fp-contract=fast"))) static void
KFN(block_gram)(const float *s, int64_t n, int64_t bp, float *bg, const float *X,
                int64_t stride, int64_t pc, int64_t plen)
{
    int64_t tiles = (n + TS - 1) / TS;
    int64_t steps = (tiles * (tiles + 1) / 2) * (bp / VW);  /* k steps in this block */
    int64_t lines_per_row = (plen + 15) / 16;               /* 64-byte lines per row */
    int64_t lines = plen > 0 ? n * lines_per_row : 0;
    int64_t per_step = steps > 0 ? (lines + steps - 1) / steps : 0;
    int64_t pf_row = 0, pf_off = 0;

    for (int64_t ti = 0; ti < tiles; ti++) {
        const float *a[TS];
        for (int u = 0; u < TS; u++)
            a[u] = s + (TS * ti + u < n ? TS * ti + u : 0) * bp;
        for (int64_t tj = ti; tj < tiles; tj++) {
            const float *b[TS];
            for (int u = 0; u < TS; u++)
                b[u] = s + (TS * tj + u < n ? TS * tj + u : 0) * bp;
            KFN(vf) acc[TS][TS];  /* one block: B / VW products per lane */
            memset(acc, 0, sizeof acc);
            for (int64_t k = 0; k < bp; k += VW) {
                KFN(vf) va[TS], vb[TS];
                for (int u = 0; u < TS; u++) {
                    va[u] = *(const KFN(vf) *)(a[u] + k);
                    vb[u] = *(const KFN(vf) *)(b[u] + k);
                }
                for (int u = 0; u < TS; u++)
                    for (int v = 0; v < TS; v++)
                        acc[u][v] += va[u] * vb[v];
                for (int64_t p = 0; p < per_step && pf_row < n; p++) {
                    __builtin_prefetch(X + pf_row * stride + pc + pf_off * 16, 0, 2);
                    if (++pf_off == lines_per_row) {
                        pf_off = 0;
                        pf_row++;
                    }
                }
            }
            for (int u = 0; u < TS; u++)
                for (int v = 0; v < TS; v++) {
                    int64_t i = TS * ti + u, j = TS * tj + v;
                    if (i < n && j < n && i <= j)
                        bg[i * n + j] = KFN(hsum)(acc[u][v]);
                }
        }
    }
}
