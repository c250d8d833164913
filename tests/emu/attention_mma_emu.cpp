// Kernel file attention_mma.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "attention_mma.cu"
