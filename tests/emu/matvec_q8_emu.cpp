// Kernel file matvec_q8.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matvec_q8.cu"
