// Kernel file vision_rope.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "vision_rope.cu"
