// sim_test.h: shared by the test kernels of tests/test_cuda_sim.py. Each entry point launches one kernel
// and returns 0, or the cudaError_t of the launch (kb_sim_last_error() holds the message).
#pragma once
#include "../../kernels/cuda/include/kb_cuda.h"
#define SIMTEST extern "C" __attribute__((visibility("default"))) int
#define SIMTEST_RETURN() return (int)cudaGetLastError()
