// Outcome names (metric labels and policy keys) and the retry.policies lookup.
#include "proxy/resilience/outcome.h"

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

using config::OutcomePolicy;

TEST(OutcomeTest, NamesStatusesAndFailureKinds) {
  EXPECT_EQ(Outcome::fromStatus(503).name(), "503");
  EXPECT_EQ(Outcome::fromStatus(200).name(), "200");
  EXPECT_EQ(Outcome::connectError().name(), "connect_error");
  EXPECT_EQ(Outcome::timeout().name(), "timeout");
  EXPECT_EQ(Outcome::reset().name(), "reset");
  EXPECT_EQ(Outcome::streamError().name(), "stream_error");
}

TEST(OutcomeTest, SuccessIsAnyStatusBelow400) {
  EXPECT_TRUE(Outcome::fromStatus(200).isSuccess());
  EXPECT_TRUE(Outcome::fromStatus(304).isSuccess());
  EXPECT_FALSE(Outcome::fromStatus(400).isSuccess());
  EXPECT_FALSE(Outcome::fromStatus(503).isSuccess());
  EXPECT_FALSE(Outcome::reset().isSuccess());
}

struct PolicyCase {
  Outcome outcome;
  OutcomePolicy expected;
};

class DefaultPolicyTest : public testing::TestWithParam<PolicyCase> {};

TEST_P(DefaultPolicyTest, FollowsTheShippedTable) {
  const config::RetryConfig retry;
  EXPECT_EQ(policyFor(retry, GetParam().outcome), GetParam().expected) << GetParam().outcome.name();
}

INSTANTIATE_TEST_SUITE_P(Defaults, DefaultPolicyTest,
                         testing::Values(PolicyCase{Outcome::fromStatus(408), {true, false}},
                                         PolicyCase{Outcome::fromStatus(409), {true, false}},
                                         PolicyCase{Outcome::fromStatus(429), {true, false}},
                                         PolicyCase{Outcome::fromStatus(500), {true, true}},
                                         PolicyCase{Outcome::fromStatus(502), {true, true}},
                                         PolicyCase{Outcome::fromStatus(503), {true, true}},
                                         PolicyCase{Outcome::fromStatus(599), {true, true}},
                                         PolicyCase{Outcome::fromStatus(401), {false, false}},
                                         PolicyCase{Outcome::fromStatus(403), {false, false}},
                                         PolicyCase{Outcome::fromStatus(400), {false, false}},
                                         PolicyCase{Outcome::fromStatus(404), {false, false}},
                                         PolicyCase{Outcome::fromStatus(422), {false, false}},
                                         PolicyCase{Outcome::fromStatus(200), {false, false}},
                                         PolicyCase{Outcome::fromStatus(301), {false, false}},
                                         PolicyCase{Outcome::connectError(), {true, true}},
                                         PolicyCase{Outcome::timeout(), {true, true}},
                                         PolicyCase{Outcome::reset(), {true, true}},
                                         PolicyCase{Outcome::streamError(), {true, true}}));

TEST(PolicyForTest, ExactEntryBeatsItsClass) {
  config::RetryConfig retry;
  retry.policies["503"] = {false, true};
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(503)), (OutcomePolicy{false, true}));
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(502)), (OutcomePolicy{true, true}));
}

TEST(PolicyForTest, ClassKeysCoverOtherHundreds) {
  config::RetryConfig retry;
  retry.policies["4xx"] = {true, false};
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(418)), (OutcomePolicy{true, false}));
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(401)), (OutcomePolicy{false, false}));
}

TEST(PolicyForTest, UnlistedOutcomesAreNeitherRetriedNorCounted) {
  config::RetryConfig retry;
  retry.policies.clear();
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(503)), OutcomePolicy{});
  EXPECT_EQ(policyFor(retry, Outcome::timeout()), OutcomePolicy{});
}

TEST(PolicyForTest, SuccessesNeverGetAPolicyEvenIfListed) {
  config::RetryConfig retry;
  retry.policies["200"] = {true, true};
  retry.policies["2xx"] = {true, true};
  EXPECT_EQ(policyFor(retry, Outcome::fromStatus(200)), OutcomePolicy{});
}

}  // namespace
}  // namespace bulwark::resilience
