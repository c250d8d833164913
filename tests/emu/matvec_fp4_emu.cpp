// Kernel file matvec_fp4.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matvec_fp4.cu"
