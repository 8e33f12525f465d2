"""Build-time check: can CuPy's run-time compiler (NVRTC) compile CuPy's kernel preamble here?

Runs without a GPU (NVRTC compiles CUDA C++ to PTX on the CPU), so ``docker build``
fails at once when the image lacks the CUDA runtime headers that CuPy 13 needs on
CUDA >= 12.2 (``cuda_fp16.h`` -> ``vector_types.h``; CuPy install docs, "CuPy always
raises NVRTC_ERROR_COMPILATION (6)"), instead of every scan failing at run time.
Include paths are CuPy's own: its ``_core/include`` and ``$CUDA_PATH/include``.
Exit 0 on success, 1 with the compiler's message otherwise.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    import cupy
    from cupy import _environment
    from cupy.cuda import compiler

    cuda_path = _environment.get_cuda_path()
    includes = ["-I" + os.path.join(os.path.dirname(cupy.__file__), "_core", "include")]
    if cuda_path:
        includes.append("-I" + os.path.join(cuda_path, "include"))
    try:
        includes += list(compiler._get_extra_include_dir_opts())  # pip-installed headers
    except Exception:  # noqa: BLE001 - optional, private in CuPy 13
        pass
    src = (
        "#include <cupy/carray.cuh>\n"
        'extern "C" __global__ void hepascreen_check(CArray<float, 1> x)'
        " { x[threadIdx.x] = x[threadIdx.x] * 2.0f + 1.0f; }\n"
    )
    prog = compiler._NVRTCProgram(src, "hepascreen_check.cu")
    try:
        prog.compile(tuple(includes) + ("-arch=compute_70", "--std=c++17"))
    except Exception as exc:  # noqa: BLE001 - report and fail the build
        print(
            f"CuPy {cupy.__version__} cannot compile its kernels (CUDA_PATH={cuda_path}): "
            f"{exc}\nInstall the CUDA runtime headers (cuda-cudart-dev-12-X).",
            file=sys.stderr,
        )
        return 1
    print(f"CuPy {cupy.__version__}: NVRTC compiled a kernel with CUDA_PATH={cuda_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
