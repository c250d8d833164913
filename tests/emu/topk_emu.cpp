// Kernel file topk.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "topk.cu"
