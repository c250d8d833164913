// Kernel file persist_fp4.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "persist_fp4.cu"
