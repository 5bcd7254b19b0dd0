#include "proxy/admin/admin_server.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include <cstring>
#include <string_view>
#include <utility>

#include "proxy/server/listen_socket.h"

namespace bulwark::admin {

AdminServer::AdminServer(event_base* base, const std::atomic<bool>& ready, Sources sources)
    : ready_(ready), sources_(std::move(sources)), http_(evhttp_new(base)) {
  evhttp_set_allowed_methods(http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_max_headers_size(http_.get(), 16 * 1024);
  evhttp_set_max_body_size(http_.get(), 0);
  evhttp_set_timeout(http_.get(), 10);
  evhttp_set_gencb(http_.get(), &AdminServer::onRequest, this);
}

std::string AdminServer::listen(const config::ListenAddress& address) {
  evhttp_bound_socket* handle =
      evhttp_bind_socket_with_handle(http_.get(), address.host.c_str(), address.port);
  if (handle == nullptr) return "cannot listen on " + address.toString();
  bound_ = server::boundAddress(evhttp_bound_socket_get_fd(handle));
  return {};
}

namespace {
void reply(evhttp_request* req, int status, const char* reason, const char* content_type,
           std::string_view body) {
  evkeyvalq* headers = evhttp_request_get_output_headers(req);
  evhttp_add_header(headers, "Content-Type", content_type);
  evhttp_add_header(headers, "Cache-Control", "no-store");
  evbuffer* buf = evbuffer_new();
  evbuffer_add(buf, body.data(), body.size());
  evhttp_send_reply(req, status, reason, buf);
  evbuffer_free(buf);
}
}  // namespace

void AdminServer::onRequest(evhttp_request* req, void* arg) {
  auto* self = static_cast<AdminServer*>(arg);
  const char* path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
  std::string_view p = path ? path : "";
  if (p == "/metrics") {
    reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
          self->sources_.metrics_text());
  } else if (p == "/health/detailed") {
    reply(req, 200, "OK", "application/json", self->sources_.health_detailed());
  } else if (p == "/config/routes") {
    // ?path=/v1/chat/completions&model=o3 (both optional; the path defaults to "/").
    const char* query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    evkeyvalq params{};
    std::string route_path = "/";
    std::string model;
    if (query != nullptr && evhttp_parse_query_str(query, &params) == 0) {
      if (const char* v = evhttp_find_header(&params, "path")) route_path = v;
      if (const char* v = evhttp_find_header(&params, "model")) model = v;
    }
    evhttp_clear_headers(&params);
    if (route_path.empty() || route_path.front() != '/') {
      reply(req, 400, "Bad Request", "text/plain; charset=utf-8", "path must start with /\n");
      return;
    }
    reply(req, 200, "OK", "application/json",
          self->sources_.route_explanation(route_path, model));
  } else if (p == "/healthz") {
    reply(req, 200, "OK", "text/plain; charset=utf-8", "ok\n");
  } else if (p == "/readyz") {
    if (self->ready_.load()) {
      reply(req, 200, "OK", "text/plain; charset=utf-8", "ready\n");
    } else {
      reply(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "draining\n");
    }
  } else {
    reply(req, 404, "Not Found", "text/plain; charset=utf-8", "not found\n");
  }
}

}  // namespace bulwark::admin
