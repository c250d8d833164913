// Kernel file matvec_q4k.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "matvec_q4k.cu"
