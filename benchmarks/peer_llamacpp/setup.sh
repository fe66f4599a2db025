#!/usr/bin/env bash
# Builds the llama.cpp peer (llama-cpp-python, pinned, from source) in its OWN virtualenv: it is never a
# dependency of sparse_expansion, and nothing of ours imports it. The recipe (peer.py) runs its llama.cpp
# side in child processes of that venv's python.
#   benchmarks/peer_llamacpp/setup.sh VENV_DIR
# (~5 minutes of compiling on 2 idle cores; 65 minutes at nice 10 beside five other engineers' jobs)
#
# CPU flags: -DGGML_NATIVE=OFF with AVX-512, AVX512-VNNI and AVX512-BF16 on and AMX OFF. The native build
# (which turns AMX on where the compiler sees it) segfaulted on every batched eval of 2+ tokens on the
# project's VM (an Intel Xeon with AMX, issue 20), so builds here are never native; AVX-512 + VNNI + BF16
# is what llama.cpp's x86 kernels use for Q4/Q8/F16 dot products on these CPUs. Change the flags only
# with a note in the report. Run again on a venv that holds this version already, it skips the build.
#
# The sdist's vendored llama.cpp sources are kept in VENV_DIR/src/: peer.py uses their
# convert_hf_to_gguf.py (with their own gguf-py) to make the F16 GGUF that Q8_0 / Q4_0 are quantized from.
set -euo pipefail
VENV=${1:?usage: benchmarks/peer_llamacpp/setup.sh VENV_DIR}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PYTHON=${PYTHON:-python3}
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
 -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
 -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# sentencepiece: a requirement of llama.cpp's converter (convert_gguf.py adds this venv's packages after ours)
"$VENV/bin/python" -m pip install -q numpy "sentencepiece>=0.1.98,<0.3.0"
mkdir -p "$VENV/src"
if [ ! -d "$VENV/src/llama_cpp_python-$VERSION" ]; then
  [ -f "$VENV/src/llama_cpp_python-$VERSION.tar.gz" ] || "$VENV/bin/python" -m pip download -q --no-deps \
    --no-binary llama-cpp-python -d "$VENV/src" "llama-cpp-python==$VERSION"
  tar -xzf "$VENV/src/llama_cpp_python-$VERSION.tar.gz" -C "$VENV/src"
fi
if "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "setup.sh: llama-cpp-python $VERSION already built in $VENV (flags: $VENV/cmake_args.txt)"
else
  "$VENV/bin/python" -m pip install -v --no-cache-dir --no-binary llama-cpp-python \
    "$VENV/src/llama_cpp_python-$VERSION" > "$VENV/build.log" 2>&1 \
    || { tail -40 "$VENV/build.log"; echo "setup.sh: build failed, full log in $VENV/build.log" >&2; exit 1; }
  echo "$CMAKE_ARGS" > "$VENV/cmake_args.txt"
fi
"$VENV/bin/python" -c "import llama_cpp, sys; print('llama-cpp-python', llama_cpp.__version__); \
print(llama_cpp.llama_print_system_info().decode())"
ls "$VENV/src/llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" > /dev/null
echo "setup.sh: ready: $VENV"
