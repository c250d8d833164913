// Kernel file delta_chunked.cu compiled as C++ for the CPU emulation (cuda_emu.h).
#include "delta_chunked.cu"
