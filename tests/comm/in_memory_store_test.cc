// InMemoryStore: set and wait, timeouts that name the missing keys, shutdown.
#include "comm/in_memory_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/time/clock.h"

namespace mimo::comm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(InMemoryStoreTest, WaitReturnsValuesInTheOrderAsked) {
  InMemoryStore store;
  ASSERT_TRUE(store.Set("a", "1").ok());
  ASSERT_TRUE(store.Set("b", std::string("\0x", 2)).ok());
  absl::StatusOr<std::vector<std::string>> values = store.Wait({"b", "a"}, absl::Seconds(1));
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_THAT(*values, ElementsAre(std::string("\0x", 2), "1"));
}

TEST(InMemoryStoreTest, SetReplacesTheValue) {
  InMemoryStore store;
  ASSERT_TRUE(store.Set("a", "1").ok());
  ASSERT_TRUE(store.Set("a", "2").ok());
  EXPECT_THAT(*store.Wait({"a"}, absl::Seconds(1)), ElementsAre("2"));
}

TEST(InMemoryStoreTest, WaitWakesWhenAnotherThreadSets) {
  InMemoryStore store;
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(store.Set("late", "v").ok());
  });
  absl::StatusOr<std::vector<std::string>> values = store.Wait({"late"}, absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_THAT(*values, ElementsAre("v"));
}

TEST(InMemoryStoreTest, TimeoutNamesOnlyTheMissingKeys) {
  InMemoryStore store;
  ASSERT_TRUE(store.Set("present", "v").ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<std::string>> values =
      store.Wait({"present", "missing1", "missing2"}, absl::Milliseconds(100));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(values.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(values.status().message(), HasSubstr("missing1, missing2"));
  EXPECT_THAT(values.status().message(), Not(HasSubstr("present")));
}

TEST(InMemoryStoreTest, ShutdownFailsWaitersAndLaterCalls) {
  InMemoryStore store;
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(50));
    store.Shutdown();
  });
  absl::StatusOr<std::vector<std::string>> values = store.Wait({"never"}, absl::Seconds(10));
  closer.join();
  EXPECT_EQ(values.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store.Set("a", "1").code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mimo::comm
