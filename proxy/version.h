// The build's version string, as printed by --version and exported as bulwark_build_info.
#pragma once

namespace bulwark {
const char* version();
}  // namespace bulwark
