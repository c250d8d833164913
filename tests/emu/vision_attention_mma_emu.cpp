// Kernel file vision_attention_mma.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "vision_attention_mma.cu"
