# CUDA tools (included by tools/CMakeLists.txt when CUDA is on).
#   kvr_cuda_check   run a HF folder on one GPU: prompt logits + greedy decode (for hf_compare.py)
#   kvr_cuda_bench   single-GPU benchmarks on random weights: TTFT, attention, decode ITL, floors
add_executable(kvr_cuda_check ${CMAKE_CURRENT_LIST_DIR}/kvr_cuda_check.cc)
target_compile_options(kvr_cuda_check PRIVATE ${KVR_WARNINGS})
target_link_libraries(kvr_cuda_check PRIVATE kvr_cuda kvr_model nlohmann_json::nlohmann_json)
add_executable(kvr_cuda_bench ${CMAKE_CURRENT_LIST_DIR}/kvr_cuda_bench.cc)
target_compile_options(kvr_cuda_bench PRIVATE ${KVR_WARNINGS})
target_link_libraries(kvr_cuda_bench PRIVATE kvr_cuda kvr_kernels nlohmann_json::nlohmann_json)
