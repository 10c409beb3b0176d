/* Calls one compiled kernel on inputs from files and writes its raw outputs to a file: the kernels
 * run without Python, e.g. a cross-compiled build under qemu-user (tests/test_native_aarch64.py).
 * The libraries are the ones setup.py builds (krum_mpi/native/_<name>*.so), opened with dlopen.
 *
 *   kernel_driver LIB gram  n d ref block col0 col1 X.f32 OUT   -> int64 returned column, gram (n x n
 *                                                                   f64), norm_sq (n f64), finite (n u8)
 *   kernel_driver LIB order n d mode param X.f32 OUT          -> int32 status, d f32 results
 *   kernel_driver LIB rows  n d k X.f32 MIXING.f64 OUT        -> int32 status, k x d f32 results
 *   kernel_driver LIB isa                                      -> prints the variant the library runs
 * X is n x d float32, row-major (row stride d). Exit status 0, or 2 with a message on bad use.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *must(void *p, const char *what)
{
    if (p == NULL) {
        const char *why = dlerror();
        fprintf(stderr, "kernel_driver: %s: %s\n", what, why ? why : "failed");
        exit(2);
    }
    return p;
}

static void *read_file(const char *path, size_t bytes)
{
    void *buf = must(malloc(bytes ? bytes : 1), "malloc");
    FILE *f = fopen(path, "rb");
    if (f == NULL || fread(buf, 1, bytes, f) != bytes) {
        fprintf(stderr, "kernel_driver: cannot read %zu bytes from %s\n", bytes, path);
        exit(2);
    }
    fclose(f);
    return buf;
}

static void write_parts(const char *path, int parts, const void **data, const size_t *bytes)
{
    FILE *f = fopen(path, "wb");
    for (int i = 0; f != NULL && i < parts; i++)
        if (fwrite(data[i], 1, bytes[i], f) != bytes[i]) {
            fclose(f);
            f = NULL;
        }
    if (f == NULL || fclose(f) != 0) {
        fprintf(stderr, "kernel_driver: cannot write %s\n", path);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: kernel_driver LIB (gram|order|rows|isa) ARGS... (see the source)\n");
        return 2;
    }
    void *lib = must(dlopen(argv[1], RTLD_NOW | RTLD_LOCAL), argv[1]);
    const char *what = argv[2];
    if (strcmp(what, "isa") == 0 && argc == 3) {
        const char *(*isa)(void) = (const char *(*)(void))must(dlsym(lib, "krum_native_isa"), "krum_native_isa");
        printf("%s\n", isa());
        return 0;
    }
    if (strcmp(what, "gram") == 0 && argc == 11) {
        int64_t n = atoll(argv[3]), d = atoll(argv[4]), ref = atoll(argv[5]), block = atoll(argv[6]);
        int64_t col0 = atoll(argv[7]), col1 = atoll(argv[8]);
        int64_t (*size)(int64_t, int64_t) = (int64_t (*)(int64_t, int64_t))must(
            dlsym(lib, "krum_gram_work_size"), "krum_gram_work_size");
        int64_t (*gram_f32)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double *,
                            double *, uint8_t *, float *) =
            (int64_t (*)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double *, double *,
                         uint8_t *, float *))must(dlsym(lib, "krum_gram_f32"), "krum_gram_f32");
        float *X = read_file(argv[9], (size_t)(n * d) * sizeof(float));
        double *gram = calloc((size_t)(n * n), sizeof(double)), *norm_sq = calloc((size_t)n, sizeof(double));
        uint8_t *finite = malloc((size_t)n);
        float *work = malloc((size_t)size(n, block) * sizeof(float));
        memset(finite, 1, (size_t)n);
        int64_t c = gram_f32(X, n, d, col0, col1, ref, block, gram, norm_sq, finite, work);
        const void *data[] = {&c, gram, norm_sq, finite};
        size_t bytes[] = {sizeof c, (size_t)(n * n) * sizeof(double), (size_t)n * sizeof(double), (size_t)n};
        write_parts(argv[10], 4, data, bytes);
        return 0;
    }
    if (strcmp(what, "order") == 0 && argc == 9) {
        int64_t n = atoll(argv[3]), d = atoll(argv[4]), param = atoll(argv[6]);
        int mode = atoi(argv[5]);
        int (*reduce)(const float *, int64_t, const int64_t *, int64_t, int64_t, int64_t, int, int64_t, float *) =
            (int (*)(const float *, int64_t, const int64_t *, int64_t, int64_t, int64_t, int, int64_t, float *))must(
                dlsym(lib, "krum_order_reduce"), "krum_order_reduce");
        float *X = read_file(argv[7], (size_t)(n * d) * sizeof(float));
        float *out = malloc((size_t)d * sizeof(float));
        for (int64_t c = 0; c < d; c++)
            out[c] = -1.0f;
        int32_t status = reduce(X, d, NULL, n, 0, d, mode, param, out);
        const void *data[] = {&status, out};
        size_t bytes[] = {sizeof status, (size_t)d * sizeof(float)};
        write_parts(argv[8], 2, data, bytes);
        return 0;
    }
    if (strcmp(what, "rows") == 0 && argc == 9) {
        int64_t n = atoll(argv[3]), d = atoll(argv[4]), k = atoll(argv[5]);
        int (*combine)(const float *, int64_t, int64_t, const double *, int64_t, int64_t, int64_t, float *,
                       int64_t) =
            (int (*)(const float *, int64_t, int64_t, const double *, int64_t, int64_t, int64_t, float *, int64_t))
                must(dlsym(lib, "krum_combine_rows"), "krum_combine_rows");
        float *X = read_file(argv[6], (size_t)(n * d) * sizeof(float));
        double *mixing = read_file(argv[7], (size_t)(k * n) * sizeof(double));
        float *out = calloc((size_t)(k * d), sizeof(float));
        int32_t status = combine(X, n, d, mixing, k, 0, d, out, d);
        const void *data[] = {&status, out};
        size_t bytes[] = {sizeof status, (size_t)(k * d) * sizeof(float)};
        write_parts(argv[8], 2, data, bytes);
        return 0;
    }
    fprintf(stderr, "kernel_driver: unknown command or wrong argument count: %s (%d arguments)\n", what, argc - 1);
    return 2;
}
