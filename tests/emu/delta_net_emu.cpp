// Kernel file delta_net.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "delta_net.cu"
