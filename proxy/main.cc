// bulwark: flags, signals, config load, then the App; nothing else.
#include <curl/curl.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "config/loader.h"
#include "proxy/app.h"
#include "proxy/observe/logger.h"
#include "proxy/version.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: bulwark [--config FILE]        run (also -c); default ./proxy.yaml\n"
               "       bulwark --check-config FILE     validate FILE, print ok or the errors\n"
               "       bulwark --version\n");
}

void printErrors(FILE* out, const bulwark::config::LoadResult& result) {
  for (const auto& e : result.errors) std::fprintf(out, "%s\n", e.toString().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "proxy.yaml";
  std::string check_path;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bulwark: %s needs a file\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--config" || arg == "-c") {
      config_path = value("--config");
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--check-config") {
      check = true;
      check_path = value("--check-config");
    } else if (arg == "--version") {
      std::printf("bulwark %s\n", bulwark::version());
      return 0;
    } else if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "bulwark: unknown argument '%s'\n", arg.c_str());
      usage(stderr);
      return 2;
    }
  }

  if (check) {
    auto result = bulwark::config::loadConfigFile(check_path, bulwark::config::processEnv());
    if (result.ok()) {
      std::printf("ok\n");
      return 0;
    }
    printErrors(stdout, result);
    return 1;
  }

  auto result = bulwark::config::loadConfigFile(config_path, bulwark::config::processEnv());
  if (!result.ok()) {
    std::fprintf(stderr, "bulwark: invalid configuration %s:\n", config_path.c_str());
    printErrors(stderr, result);
    return 1;
  }

  std::signal(SIGPIPE, SIG_IGN);  // a client that vanished is an error code, not a signal
  // No evthread_use_pthreads(): every event_base is used by its own thread only (workers
  // take requests from other threads through an eventfd), so libevent's locks would be
  // pure cost on every event and buffer operation.
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    std::fprintf(stderr, "bulwark: libcurl failed to initialise\n");
    return 1;
  }
  int rc;
  {
    bulwark::App app(config_path, std::move(*result.config));
    rc = app.run();
  }
  curl_global_cleanup();
  bulwark::observe::Logger::get().flush();
  return rc;
}
