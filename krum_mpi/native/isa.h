/* CPU dispatch shared by the compiled kernels.
 *
 * Each kernel file writes its hot loop once, in GCC vector extensions (which clang implements too)
 * over VW lanes, inside a header that it includes once per instruction set (see gram.c).
 * krum_isa_selected() picks the widest variant this CPU runs, once per process. Build flags stay
 * portable (-O3, no -march): the AVX-512 and AVX2 variants carry their own target attribute, so
 * one binary serves any x86-64; elsewhere only the generic variant is built. The kernels build
 * with GCC and with clang, with the same arithmetic (see the compiler differences at the end).
 */
#ifndef KRUM_ISA_H
#define KRUM_ISA_H

#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KRUM_X86 1
#define KRUM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define KRUM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define KRUM_X86 0
#endif

enum krum_isa { KRUM_ISA_GENERIC = 0, KRUM_ISA_AVX2 = 1, KRUM_ISA_AVX512 = 2 };

static inline int krum_isa_best(void)
{
#if KRUM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return KRUM_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return KRUM_ISA_AVX2;
#endif
    return KRUM_ISA_GENERIC;
}

static inline const char *krum_isa_name(int isa)
{
    return isa == KRUM_ISA_AVX512 ? "avx512" : isa == KRUM_ISA_AVX2 ? "avx2" : "generic";
}

/* KRUM_MPI_ISA=generic|avx2|avx512 caps the variant (tests run every variant the CPU has). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
static inline int krum_isa_resolve(void)
{
    int isa = krum_isa_best();
    const char *cap = getenv("KRUM_MPI_ISA");
    if (cap != NULL) {
        int want = strcmp(cap, "generic") == 0 ? KRUM_ISA_GENERIC
                 : strcmp(cap, "avx2") == 0 ? KRUM_ISA_AVX2
                 : strcmp(cap, "avx512") == 0 ? KRUM_ISA_AVX512 : isa;
        if (want < isa)
            isa = want;
    }
    return isa;
}

/* The variant, resolved on the first call of this library and kept: CPU detection and getenv once
 * per process, not per call. Threads racing on the first call resolve the same value. */
static atomic_int krum_isa_resolved = -1; /* -1: not resolved yet */
static inline int krum_isa_selected(void)
{
    int isa = atomic_load_explicit(&krum_isa_resolved, memory_order_relaxed);
    if (isa < 0) {
        isa = krum_isa_resolve();
        atomic_store_explicit(&krum_isa_resolved, isa, memory_order_relaxed);
    }
    return isa;
}

/* Exported by every kernel library (each holds its own resolved variant): forget it, so that the
 * next call looks at the CPU and KRUM_MPI_ISA again. For tests that switch variants in one process
 * (krum_mpi.native.reset_isa); nothing else calls it. */
void krum_isa_reset(void) { atomic_store_explicit(&krum_isa_resolved, -1, memory_order_relaxed); }

/* Compiler differences, kept here so that the kernels read the same under GCC and clang.
 *
 * KRUM_SHUFFLE(v, ivec, i0, i1, ...): v's lanes picked by constant indices. GCC's __builtin_shuffle
 * takes an index vector of type ivec; clang has only __builtin_shufflevector, which takes the
 * indices themselves (GCC has that one from version 12 on only). */
#if defined(__clang__)
#define KRUM_SHUFFLE(v, ivec, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define KRUM_SHUFFLE(v, ivec, ...) __builtin_shuffle(v, (ivec){__VA_ARGS__})
#endif

/* FMA contraction. The build turns it off for all code (-ffp-contract=off; GCC's -std=c11 implies
 * it, clang's default is "on"), so a*b + c rounds twice, as NumPy does, wherever the kernels mirror
 * NumPy's float32 arithmetic. The hot loops that want one rounding per multiply-add turn it on:
 *   KRUM_CONTRACT          GCC: an attribute on each such function;
 *   KRUM_CONTRACT_BEGIN    clang: a file-scope pragma before such functions (clang has no
 *   KRUM_CONTRACT_END      per-function form), and back off after them.
 * Every product-sum there is one expression (c += a * b), so GCC's fast contraction and clang's
 * fuse the same operations: one FMA each where the target has one. */
#if defined(__clang__)
#define KRUM_CONTRACT
#define KRUM_CONTRACT_BEGIN _Pragma("clang fp contract(fast)")
#define KRUM_CONTRACT_END _Pragma("clang fp contract(off)")
#else
#define KRUM_CONTRACT __attribute__((optimize("fp-contract=fast")))
#define KRUM_CONTRACT_BEGIN
#define KRUM_CONTRACT_END
#endif

#endif
