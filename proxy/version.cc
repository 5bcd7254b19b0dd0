#include "proxy/version.h"

namespace bulwark {
const char* version() {
  return BULWARK_VERSION;
}
}  // namespace bulwark
