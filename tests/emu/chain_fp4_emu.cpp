// Kernel file chain_fp4.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "chain_fp4.cu"
