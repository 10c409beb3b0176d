/* The smallest kernel library: reports the instruction set the kernels dispatch to. It proves the
 * build works and gives `krum-mpi bench` and the tests the variant in use. */
#include "isa.h"

const char *krum_native_isa(void) { return krum_isa_name(krum_isa_selected()); }
