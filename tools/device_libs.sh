# Sourced (not run) by the scripts that run carried binaries on the GPU machine:
#   [CARRIED_LIBS=dir] . tools/device_libs.sh     (default .carry/dev/lib, see carry_for_device.sh;
#                                                  a variable, since a sourced file sees the caller's $1)
# Sets DEVICE_LIBS, a library path: the carried libraries (Abseil, gRPC, Protobuf, ...), then the
# machine's own cuDNN and NCCL (wherever its Python packages put them; found once, by name), then
# the CUDA toolkit's. Each caller exports it as LD_LIBRARY_PATH or passes it per command.
kvr_lib_dir() {  # the folder holding library $1, or nothing
  local f
  f=$(find / -name "$1" -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$f" ] && dirname "$f"
}
DEVICE_LIBS="$PWD/${CARRIED_LIBS:-.carry/dev/lib}:$(kvr_lib_dir libcudnn.so.9):$(kvr_lib_dir libnccl.so.2):/usr/local/cuda/lib64:/usr/local/cuda/lib"
