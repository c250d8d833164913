// Kernel file vision_attention.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "vision_attention.cu"
