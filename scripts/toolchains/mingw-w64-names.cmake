# CMAKE_USER_MAKE_RULES_OVERRIDE of the MinGW-w64 toolchain: read after CMake's
# Platform/Windows-GNU.cmake, which names DLLs "lib<name>.dll". ggml's backend loader looks for
# "ggml-<backend>*.dll" on Windows (ggml-backend-reg.cpp: backend_filename_prefix), and MSVC
# builds are named that way: ggml-base.dll, ggml.dll, llama.dll, ggml-cpu-haswell.dll.
set(CMAKE_SHARED_LIBRARY_PREFIX "")
set(CMAKE_SHARED_MODULE_PREFIX "")
