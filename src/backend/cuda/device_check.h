#pragma once
#include <string>

namespace nb::cuda {
// One line per visible device, or "no CUDA device".
std::string describe_devices();
// Runs y = 2x + y on the device and checks it on the host.
bool run_axpy_selftest();
}  // namespace nb::cuda
