/* The loops of rows.c's krum_combine_rows, included once per instruction set. The includer defines
 *   KFN(name)  the name of a function in this variant (name##_avx512, ...)
 *   VW         float lanes per vector (16, 8, 4)
 *   KTARGET    the target attribute of the variant (empty for generic)
 * X rows and outputs may start anywhere (unaligned loads and stores). The build turns FMA contraction
 * off (isa.h); the sums here want it (one rounding per term, and half the instructions). */
KRUM_CONTRACT_BEGIN

typedef float KFN(vf) __attribute__((vector_size(VW * 4)));
typedef float KFN(vfu) __attribute__((vector_size(VW * 4), aligned(4), may_alias));

#define KFN_LOAD(p) ((KFN(vf))*(const KFN(vfu) *)(p))
#define KFN_STORE(p, v) (*(KFN(vfu) *)(p) = (v))
#define KFN_FAST KTARGET KRUM_CONTRACT

/* 1 when every lane of v is finite: v * 0 is 0 for a finite lane, NaN for NaN and +-Inf. */
KFN_FAST static inline int KFN(finite)(KFN(vf) v)
{
    KFN(vf) z = v * 0.0f;
    int ok = 1;
    for (int l = 0; l < VW; l++)
        ok &= z[l] == z[l];
    return ok;
}

/* 1 when out[0..len) are all finite (one multiply-add per vector: the outputs are in L1). */
KFN_FAST static int KFN(block_finite)(const float *out, int64_t len)
{
    KFN(vf) z = {0};
    int64_t g = 0;
    for (; g + VW <= len; g += VW)
        z += KFN_LOAD(out + g) * 0.0f;
    float s = 0.0f;
    for (; g < len; g++)
        s += out[g] * 0.0f;
    return KFN(finite)(z) && s == s;
}

/* T outputs x V vectors of columns in registers: for each column group of the fast part of
 * [c0, c1), the u rows of the tile centred on its first row (the anchor), each loaded once and
 * multiplied into all T outputs; then + (sum of weights) * anchor. w is u x T (row-major). */
KFN_FAST __attribute__((always_inline)) static inline void
KFN(tile)(const int T, const int V, const float *const *rows, const float *w, int64_t u,
          const float *sum, float *out, int64_t out_stride, int64_t c0, int64_t c1)
{
    for (int64_t g = c0; g + V * VW <= c1; g += V * VW) {
        KFN(vf) a[4], acc[ROWS_TILE][4];
        for (int v = 0; v < V; v++)
            a[v] = KFN_LOAD(rows[0] + g + v * VW);
        for (int t = 0; t < T; t++)
            for (int v = 0; v < V; v++)
                acc[t][v] = (KFN(vf)){0};
        for (int64_t r = 0; r < u; r++) {
            const float *x = rows[r] + g, *wr = w + r * T;
            KFN(vf) xc[4];
            for (int v = 0; v < V; v++)
                xc[v] = KFN_LOAD(x + v * VW) - a[v];
            for (int t = 0; t < T; t++)
                for (int v = 0; v < V; v++)
                    acc[t][v] += wr[t] * xc[v];
        }
        for (int t = 0; t < T; t++)
            for (int v = 0; v < V; v++)
                KFN_STORE(out + t * out_stride + g + v * VW, acc[t][v] + sum[t] * a[v]);
    }
}

/* The three tile shapes, each with 8 (or 4) independent accumulator chains: 8 outputs x 1 vector
 * (dense mixings), 4 x 2, and 1 x 4 (a single output: memory-bound, 4 chains hide FMA latency). */
KFN_FAST static void KFN(tile8)(const float *const *rows, const float *w, int64_t u, const float *sum,
                                float *out, int64_t out_stride, int64_t c0, int64_t c1)
{
    KFN(tile)(8, 1, rows, w, u, sum, out, out_stride, c0, c1);
}

KFN_FAST static void KFN(tile4)(const float *const *rows, const float *w, int64_t u, const float *sum,
                                float *out, int64_t out_stride, int64_t c0, int64_t c1)
{
    KFN(tile)(4, 2, rows, w, u, sum, out, out_stride, c0, c1);
}

/* A single output is memory-bound: it reads its u rows 8 at a time over the block, the partial sums
 * in the output block (L1), so that the hardware prefetchers follow 8 row streams, not u. */
KFN_FAST static void KFN(tile1)(const float *const *rows, const float *w, int64_t u, const float *sum,
                                float *out, int64_t out_stride, int64_t c0, int64_t c1)
{
    (void)out_stride;
    const float *xa = rows[0];
    for (int64_t r0 = 0; r0 < u; r0 += 8) {
        int64_t r1 = r0 + 8 < u ? r0 + 8 : u;
        for (int64_t g = c0; g + 4 * VW <= c1; g += 4 * VW) {
            KFN(vf) a[4], acc[4];
            for (int v = 0; v < 4; v++) {
                a[v] = KFN_LOAD(xa + g + v * VW);
                acc[v] = r0 == 0 ? (KFN(vf)){0} : KFN_LOAD(out + g + v * VW);
            }
            for (int64_t r = r0; r < r1; r++)
                for (int v = 0; v < 4; v++)
                    acc[v] += w[r] * (KFN_LOAD(rows[r] + g + v * VW) - a[v]);
            for (int v = 0; v < 4; v++)
                KFN_STORE(out + g + v * VW, r1 == u ? acc[v] + sum[0] * a[v] : acc[v]);
        }
    }
}

/* The columns [c0, c1) left over by a tile's vector groups, element by element with the tile's
 * arithmetic (its anchor, its rows in order, its float32 weights, the same contraction), so that a
 * column's value does not depend on where the block of columns starts or ends: the sharded placement
 * then gets, block by block, bitwise the values of the whole rows. A non-finite element gets
 * rows_element's verdict. */
KFN_FAST static void KFN(tile_tail)(const struct rows_plan *p, int64_t t, float *out, int64_t out_stride,
                                    int64_t c0, int64_t c1)
{
    const int64_t j0 = p->tile_j0[t], T = p->tile_T[t], u = p->tile_u[t];
    const float *const *rows = p->tile_rows[t];
    const float *w = p->tile_w[t];
    for (int64_t col = c0; col < c1; col++) {
        const float a = rows[0][col];
        for (int64_t jt = 0; jt < T; jt++) {
            float acc = 0.0f;
            for (int64_t r = 0; r < u; r++)
                acc += w[r * T + jt] * (rows[r][col] - a);
            float res = acc + p->sum32[j0 + jt] * a;
            out[(j0 + jt) * out_stride + col] = isfinite(res) ? res : rows_element(p, j0 + jt, col);
        }
    }
}

/* Block by block, tile by tile: ROWS_BLOCK columns stay in L2 across the tiles; a lone output
 * (Multi-Krum, MDA) takes longer blocks, longer runs of each row for the prefetchers. */
KFN_FAST static void KFN(rows_combine)(const struct rows_plan *p, int64_t col0, int64_t col1, float *out,
                                       int64_t out_stride)
{
    int64_t block = p->tiles == 1 && p->tile_T[0] == 1 ? ROWS_BLOCK_SINGLE : ROWS_BLOCK;
    for (int64_t b0 = col0; b0 < col1; b0 += block) {
        int64_t b1 = b0 + block < col1 ? b0 + block : col1;
        for (int64_t t = 0; t < p->tiles; t++) {
            int64_t j0 = p->tile_j0[t], T = p->tile_T[t], u = p->tile_u[t];
            int64_t group = (T == 8 ? 1 : T == 4 ? 2 : 4) * VW, fast = b0 + (b1 - b0) / group * group;
            float *o = out + j0 * out_stride;
            if (T == 8)
                KFN(tile8)(p->tile_rows[t], p->tile_w[t], u, p->sum32 + j0, o, out_stride, b0, fast);
            else if (T == 4)
                KFN(tile4)(p->tile_rows[t], p->tile_w[t], u, p->sum32 + j0, o, out_stride, b0, fast);
            else
                KFN(tile1)(p->tile_rows[t], p->tile_w[t], u, p->sum32 + j0, o, out_stride, b0, fast);
            if (fast < b1)
                KFN(tile_tail)(p, t, out, out_stride, fast, b1);
            /* a non-finite element (a NaN/Inf input, or 0 * NaN from a row the output does not
             * weight) gets rows_element's verdict, element by element: a column's value never
             * depends on which block of columns it shares with a non-finite one (sharded blocks) */
            for (int64_t j = j0; j < j0 + T; j++) {
                float *oj = out + j * out_stride;
                if (!KFN(block_finite)(oj + b0, fast - b0))
                    for (int64_t col = b0; col < fast; col++)
                        if (!isfinite(oj[col]))
                            oj[col] = rows_element(p, j, col);
            }
        }
    }
}

KRUM_CONTRACT_END
#undef KFN_LOAD
#undef KFN_STORE
#undef KFN_FAST
