// Kernel file conv.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "conv.cu"
