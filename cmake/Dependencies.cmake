# Finds the project's dependencies and sets GPT_* summary variables.
# Required: yaml-cpp, OpenMP, a BLAS with cblas.h (OpenBLAS preferred), PCRE2
# (the tokenizer's pre-tokenisation regex).
# Optional: CUDA toolkit with cuBLASLt, cuDNN and NCCL (the CUDA backend).

find_package(yaml-cpp REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)

# PCRE2 (8-bit) runs GPT-2's Unicode pre-tokenisation regex; 10.34 or newer for
# PCRE2_MATCH_INVALID_UTF (invalid UTF-8 in text to encode).
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8>=10.34)
set(GPT_PCRE2_SUMMARY "${PCRE2_VERSION}")

# BLAS: prefer OpenBLAS (threaded, fast); any BLAS with cblas.h works.
set(BLA_VENDOR OpenBLAS)
find_package(BLAS QUIET)
if(BLAS_FOUND)
  set(GPT_BLAS_SUMMARY "OpenBLAS")
else()
  unset(BLA_VENDOR)
  find_package(BLAS REQUIRED)
  set(GPT_BLAS_SUMMARY "generic BLAS")
endif()
find_path(GPT_CBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas x86_64-linux-gnu/openblas-pthread)
if(NOT GPT_CBLAS_INCLUDE)
  message(FATAL_ERROR "gpt: cblas.h not found: install libopenblas-dev (tools/bootstrap does)")
endif()
set(GPT_BLAS_LIBRARIES ${BLAS_LIBRARIES})
set(GPT_BLAS_INCLUDE_DIRS ${GPT_CBLAS_INCLUDE})

# CUDA: detected, never required.
set(GPT_HAVE_CUDA OFF)
set(GPT_CUDA_SUMMARY "no")
set(GPT_CUBLASLT_SUMMARY "no")
set(GPT_CUDNN_SUMMARY "no")
set(GPT_NCCL_SUMMARY "no")
if(GPT_ENABLE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc's C++20 flag (CMake 3.26+ does); the host
    # code in .cu files shares headers written in C++20.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    find_package(CUDAToolkit)
    if(CUDAToolkit_FOUND)
      set(GPT_CUDA_SUMMARY "toolkit ${CUDAToolkit_VERSION} only")
      if(TARGET CUDA::cublasLt)
        set(GPT_CUBLASLT_SUMMARY "yes")
      endif()
      find_library(GPT_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
      if(GPT_CUDNN_LIBRARY)
        set(GPT_CUDNN_SUMMARY "yes")
      endif()
      # The CUDA backend needs cuBLASLt (matmuls) and cuDNN (the baseline attention).
      if(TARGET CUDA::cublasLt AND GPT_CUDNN_LIBRARY)
        set(GPT_HAVE_CUDA ON)
        set(GPT_CUDA_SUMMARY "yes (${CUDAToolkit_VERSION}, sm_${CMAKE_CUDA_ARCHITECTURES})")
      endif()
      find_library(GPT_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
      if(GPT_NCCL_LIBRARY)
        set(GPT_NCCL_SUMMARY "yes")
      endif()
    endif()
  else()
    message(STATUS "gpt: no CUDA compiler found: building the CPU backend only")
  endif()
endif()

# MPI: optional. With it the CPU backend trains across processes (mpirun -np N,
# or `gpt launch -n N`); without it every run is a single process. Debian's
# libopenmpi-dev provides Open MPI (tools/bootstrap installs it).
option(GPT_ENABLE_MPI "Build the MPI communicator when MPI is found" ON)
set(GPT_HAVE_MPI OFF)
set(GPT_MPI_SUMMARY "no")
if(GPT_ENABLE_MPI)
  find_package(MPI QUIET COMPONENTS C)
  if(MPI_C_FOUND)
    set(GPT_HAVE_MPI ON)
    # The implementation's version from its header (Open MPI defines OMPI_*_VERSION).
    set(GPT_MPI_SUMMARY "yes (MPI ${MPI_C_VERSION})")
    find_file(GPT_MPI_H mpi.h PATHS ${MPI_C_HEADER_DIR} ${MPI_C_INCLUDE_DIRS} NO_DEFAULT_PATH)
    if(GPT_MPI_H)
      file(STRINGS ${GPT_MPI_H} GPT_OMPI_VERSION_LINES REGEX "^#define OMPI_(MAJOR|MINOR|RELEASE)_VERSION ")
      if(GPT_OMPI_VERSION_LINES MATCHES "OMPI_MAJOR_VERSION ([0-9]+);#define OMPI_MINOR_VERSION ([0-9]+);#define OMPI_RELEASE_VERSION ([0-9]+)")
        set(GPT_MPI_SUMMARY "Open MPI ${CMAKE_MATCH_1}.${CMAKE_MATCH_2}.${CMAKE_MATCH_3}")
      endif()
    endif()
  else()
    message(STATUS "gpt: MPI not found: multi-process training disabled (install libopenmpi-dev; tools/bootstrap does)")
  endif()
endif()
