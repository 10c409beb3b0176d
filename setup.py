"""Build the optional compiled kernels (krum_mpi/native/*.c); metadata lives in pyproject.toml.

Each kernel is a plain C library loaded with ctypes. Without a working C compiler (none installed,
or CC=false) the install still succeeds and every rule runs its NumPy path (krum_mpi.native says
which). Where a compiler works, every kernel must build: a kernel that fails to compile stops the
install with the compiler's error, instead of leaving that rule on its slow path unnoticed. GCC and
clang both build them, with the same arithmetic (krum_mpi/native/isa.h).
"""
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

NATIVE = Path("krum_mpi/native")
KERNELS = sorted(p.stem for p in NATIVE.glob("*.c"))  # one shared library per C file
# -ffp-contract=off: no FMA unless a kernel asks for it (isa.h), whichever compiler builds
ARGS = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=off", "-Wall",
                                           "-Wno-unknown-pragmas"]


class BuildKernels(build_ext):
    """build_ext that first checks for a working C compiler: none, and the kernels are skipped with
    one line saying so; one, and any kernel that fails to build fails the install."""

    def build_extensions(self):
        compiler = " ".join(self.compiler.compiler_so[:1]) if hasattr(self.compiler, "compiler_so") else "cc"
        if not self._compiler_works():
            print(f"krum-mpi: no working C compiler ({compiler}): installing without the compiled kernels; "
                  "every rule runs its NumPy path", file=sys.stderr)
            return
        print(f"krum-mpi: building the compiled kernels {KERNELS} with {compiler}", file=sys.stderr)
        super().build_extensions()

    def _compiler_works(self):
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "krum_cc_check.c"
            source.write_text("int krum_cc_check(void) { return 0; }\n")
            try:
                self.compiler.compile([str(source)], output_dir=tmp)
            except CompileError:  # also raised when the compiler program is missing
                return False
        return True


setup(cmdclass={"build_ext": BuildKernels}, ext_modules=[
    Extension(f"krum_mpi.native._{name}", [f"krum_mpi/native/{name}.c"], depends=[str(h) for h in NATIVE.glob("*.h")],
              extra_compile_args=ARGS)
    for name in KERNELS
])
