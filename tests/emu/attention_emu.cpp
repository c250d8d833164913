// Kernel file attention.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "attention.cu"
