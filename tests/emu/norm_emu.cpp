// Kernel file norm.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "norm.cu"
