// Kernel file matvec_f16.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matvec_f16.cu"
