// Kernel file vision_bias_act.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "vision_bias_act.cu"
