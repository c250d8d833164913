// Kernel file rope.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "rope.cu"
