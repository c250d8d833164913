// Kernel file ffn_fp4.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "ffn_fp4.cu"
