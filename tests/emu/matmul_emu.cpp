// Kernel file matmul.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matmul.cu"
