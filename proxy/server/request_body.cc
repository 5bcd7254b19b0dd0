#include "proxy/server/request_body.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace bulwark::server {

RequestBody::RequestBody(std::size_t window, std::optional<std::uint64_t> length, bool retained)
    : window_(window), length_(length), retained_(retained) {}

std::size_t RequestBody::read(char* out, std::size_t max) {
  std::size_t n = std::min(max, buffered());
  if (n == 0) return 0;
  bool was_full = room() == 0;
  std::memcpy(out, data_.data() + offset_, n);
  offset_ += n;
  consumed_ += n;
  if (offset_ == data_.size()) {
    data_.clear();
    offset_ = 0;
  }
  if (was_full && room() > 0 && on_room_) on_room_();
  return n;
}

std::string RequestBody::takeAll() {
  std::string out = offset_ == 0 ? std::move(data_) : data_.substr(offset_);
  data_.clear();
  offset_ = 0;
  consumed_ += out.size();
  return out;
}

std::size_t RequestBody::room() const {
  if (ended_ || failure_ != Failure::kNone) return 0;
  if (retained_) return SIZE_MAX;  // bounded by the retry limit, which the writer enforces
  return buffered() >= window_ ? 0 : window_ - buffered();
}

void RequestBody::append(const char* data, std::size_t len) {
  if (len == 0 || ended_ || failure_ != Failure::kNone) return;
  if (offset_ > 0 && offset_ >= data_.size() / 2) {
    data_.erase(0, offset_);  // at most a window's worth moves
    offset_ = 0;
  }
  data_.append(data, len);
  received_ += len;
  notifyReader();
}

void RequestBody::end() {
  if (ended_ || failure_ != Failure::kNone) return;
  ended_ = true;
  notifyReader();
}

void RequestBody::fail(Failure failure) {
  if (ended_ || failure_ != Failure::kNone || failure == Failure::kNone) return;
  failure_ = failure;
  data_.clear();
  data_.shrink_to_fit();
  offset_ = 0;
  notifyReader();
}

void RequestBody::stopRetaining() {
  if (!retained_) return;
  retained_ = false;
  notifyReader();
}

void RequestBody::notifyReader() {
  if (on_readable_) on_readable_();
}

}  // namespace bulwark::server
