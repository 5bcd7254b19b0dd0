// Bulwark's own error responses in OpenAI's error shape, so SDKs parse them:
// {"error":{"message":"...","type":"bulwark_error","param":null,"code":"..."}}
#pragma once

#include <string>
#include <string_view>

namespace bulwark::http {

std::string openAiErrorBody(std::string_view code, std::string_view message);

// Standard reason phrase for a status code ("Too Many Requests"); "Unknown" otherwise.
const char* reasonPhrase(int status);

}  // namespace bulwark::http
