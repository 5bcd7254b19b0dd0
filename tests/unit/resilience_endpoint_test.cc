// The one classifier of OpenAI and Azure endpoints: which follow the retry policies, which
// generate output (an output cap in their admission cost), and which event streams open
// with the Responses preamble.
#include "proxy/resilience/endpoint.h"

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

struct EndpointCase {
  const char* method;
  const char* path;
  bool retry_safe;
  bool generates_output;
  StreamKind stream_kind = StreamKind::kFirstEvent;
};

constexpr StreamKind kResponses = StreamKind::kResponses;

class ClassifyEndpointTest : public testing::TestWithParam<EndpointCase> {};

TEST_P(ClassifyEndpointTest, Decides) {
  const EndpointCase& c = GetParam();
  EndpointTraits traits = classifyEndpoint(c.method, c.path);
  EXPECT_EQ(traits.retry_safe, c.retry_safe) << c.method << " " << c.path;
  EXPECT_EQ(traits.generates_output, c.generates_output) << c.method << " " << c.path;
  EXPECT_EQ(traits.stream_kind, c.stream_kind) << c.method << " " << c.path;
}

INSTANTIATE_TEST_SUITE_P(
    OpenAi, ClassifyEndpointTest,
    testing::Values(EndpointCase{"GET", "/v1/models", true, false},
                    EndpointCase{"GET", "/v1/files/file-abc/content", true, false},
                    EndpointCase{"HEAD", "/v1/models", true, false},
                    EndpointCase{"OPTIONS", "/v1/chat/completions", true, true},
                    EndpointCase{"DELETE", "/v1/files/file-abc", true, false},
                    EndpointCase{"POST", "/v1/chat/completions", true, true},
                    EndpointCase{"POST", "/chat/completions", true, true},
                    EndpointCase{"POST", "/v1/chat/completions?api-version=2024-06-01", true, true},
                    EndpointCase{"POST", "/v1/completions", true, true},
                    EndpointCase{"POST", "/v1/embeddings", true, false},
                    EndpointCase{"POST", "/v1/moderations", true, false},
                    EndpointCase{"POST", "/v1/responses", true, true, kResponses},
                    EndpointCase{"POST", "/v1/responses?stream=true", true, true, kResponses},
                    EndpointCase{"GET", "/v1/responses/resp_1", true, false},
                    EndpointCase{"POST", "/v1/responses/abc/cancel", false, false},
                    EndpointCase{"POST", "/v1/chat/completions/abc", false, false},
                    EndpointCase{"POST", "/v1/files", false, false},
                    EndpointCase{"POST", "/v1/uploads", false, false},
                    EndpointCase{"POST", "/v1/batches", false, false},
                    EndpointCase{"POST", "/v1/fine_tuning/jobs", false, false},
                    EndpointCase{"POST", "/v1/threads/x/runs", false, false},
                    EndpointCase{"POST", "/v1/assistants", false, false},
                    EndpointCase{"POST", "/v1/images/generations", false, false},
                    EndpointCase{"POST", "/v1/audio/transcriptions", false, false},
                    EndpointCase{"POST", "/v1/files?purpose=/v1/embeddings", false, false},
                    EndpointCase{"POST", "/v1/chat/completions?x=/responses", true, true},
                    EndpointCase{"POST", "/v1/myresponses", false, false},
                    EndpointCase{"POST", "/v1/xcompletions", false, false},
                    EndpointCase{"POST", "/v1/xembeddings", false, false},
                    EndpointCase{"POST", "", false, false},
                    EndpointCase{"PUT", "/v1/chat/completions", false, true},
                    EndpointCase{"PATCH", "/v1/chat/completions", false, true},
                    EndpointCase{"CONNECT", "/v1/models", false, false}));

// Azure's deployment-style paths and its /openai/v1/ API classify as OpenAI's do: an Azure
// embeddings request is charged no output cap.
INSTANTIATE_TEST_SUITE_P(
    Azure, ClassifyEndpointTest,
    testing::Values(
        EndpointCase{"POST", "/openai/deployments/x/chat/completions?api-version=2024-06-01",
                     true, true},
        EndpointCase{"POST", "/openai/deployments/x/completions", true, true},
        EndpointCase{"POST", "/openai/deployments/x/embeddings?api-version=2024-06-01", true,
                     false},
        EndpointCase{"POST", "/openai/deployments/embed-large/embeddings", true, false},
        EndpointCase{"POST", "/openai/v1/embeddings", true, false},
        EndpointCase{"POST", "/openai/v1/moderations", true, false},
        EndpointCase{"POST", "/openai/v1/responses", true, true, kResponses},
        EndpointCase{"POST", "/openai/v1/chat/completions", true, true},
        EndpointCase{"POST", "/openai/files?api-version=2024-06-01", false, false},
        EndpointCase{"GET", "/openai/deployments?api-version=2024-06-01", true, false}));

}  // namespace
}  // namespace bulwark::resilience
