/* CPU dispatch shared by the compiled kernels.
 *
 * Each kernel file writes its hot loop once, in GCC vector extensions over VW lanes, inside a
 * header that it includes once per instruction set (see gram.c). KRUM_ISA_BEST() picks the
 * widest variant this CPU runs, once per process. Build flags stay portable (-O3, no -march):
 * the AVX-512 and AVX2 variants carry their own target attribute, so one binary serves any x86-64;
 * elsewhere only the generic variant is built.
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
#include <stdlib.h>
#include <string.h>
static inline int krum_isa_selected(void)
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

#endif
