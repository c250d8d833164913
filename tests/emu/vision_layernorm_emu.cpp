// Kernel file vision_layernorm.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "vision_layernorm.cu"
