// unique_ptr owners for libcurl objects.
#pragma once

#include <curl/curl.h>

#include <memory>

namespace bulwark::support {

struct CurlEasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct CurlMultiDeleter {
  void operator()(CURLM* m) const { curl_multi_cleanup(m); }
};
struct CurlShareDeleter {
  void operator()(CURLSH* s) const { curl_share_cleanup(s); }
};
struct CurlSlistDeleter {
  void operator()(curl_slist* s) const { curl_slist_free_all(s); }
};

using CurlEasyPtr = std::unique_ptr<CURL, CurlEasyDeleter>;
using CurlMultiPtr = std::unique_ptr<CURLM, CurlMultiDeleter>;
using CurlSharePtr = std::unique_ptr<CURLSH, CurlShareDeleter>;
using CurlSlistPtr = std::unique_ptr<curl_slist, CurlSlistDeleter>;

}  // namespace bulwark::support
