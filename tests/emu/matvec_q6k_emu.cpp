// Kernel file matvec_q6k.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matvec_q6k.cu"
