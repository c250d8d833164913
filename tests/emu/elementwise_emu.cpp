// Kernel file elementwise.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "elementwise.cu"
