// common.cu: the error state behind kb_cuda_last_error() (docs/CONTRACTS.md §2), one per host thread.
#include "include/kb_common.h"
#include <stdarg.h>
#include <stdio.h>

static thread_local char kb_err[512] = "";

int kb_set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(kb_err, sizeof kb_err, fmt, ap);
  va_end(ap);
  return code;
}

int kb_check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return kb_set_error(KB_ELAUNCH, "%s: %s", what, cudaGetErrorString(e));
  return KB_OK;
}

extern "C" const char* kb_cuda_last_error(void) { return kb_err; }
