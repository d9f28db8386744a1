// kb_cuda.h: the one header every kernel in kernels/cuda/ includes.
// Built by nvcc it pulls in the real CUDA headers and the PTX wrappers (kb_device.h); built by the host
// compiler with -DKB_CUDA_SIM it pulls in the CPU simulation of the CUDA execution model (sim/kb_sim.h),
// so the very same .cu source is checked on machines without a GPU. Kernels use only what these two
// headers both provide: KB_LAUNCH instead of <<< >>>, and kb:: wrappers instead of inline PTX.
#pragma once
#if defined(KB_CUDA_SIM)
#include "../sim/kb_sim.h"
#else
#include "kb_device.h"
#endif
