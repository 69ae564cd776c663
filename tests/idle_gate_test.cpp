// The "idle continuously for quiet" rule, on a fake clock.
#include "idle_gate.h"

#include <doctest/doctest.h>

using namespace sentinel;
using namespace std::chrono_literals;
using State = IdleAnswer::State;

TEST_CASE("idle must hold continuously for quiet before it counts") {
  QuietTracker quiet(30s);
  QuietTracker::Clock::time_point t0{};
  CHECK_FALSE(quiet.observe(State::idle, t0));
  CHECK(quiet.remaining(t0 + 10s) == 20s);
  CHECK_FALSE(quiet.observe(State::idle, t0 + 29s));
  CHECK(quiet.observe(State::idle, t0 + 30s));
  CHECK(quiet.remaining(t0 + 31s) == 0s);
}

TEST_CASE("a busy answer starts the quiet period again") {
  QuietTracker quiet(30s);
  QuietTracker::Clock::time_point t0{};
  quiet.observe(State::idle, t0);
  quiet.observe(State::busy, t0 + 20s);
  CHECK_FALSE(quiet.idle_since());
  CHECK_FALSE(quiet.observe(State::idle, t0 + 25s));
  CHECK_FALSE(quiet.observe(State::idle, t0 + 50s));
  CHECK(quiet.observe(State::idle, t0 + 55s));
}

TEST_CASE("an unknown answer (the idle command failed) counts as busy") {
  QuietTracker quiet(5s);
  QuietTracker::Clock::time_point t0{};
  quiet.observe(State::idle, t0);
  CHECK_FALSE(quiet.observe(State::unknown, t0 + 6s));
  CHECK_FALSE(quiet.observe(State::idle, t0 + 7s));
}

TEST_CASE("a quiet of zero is satisfied by the first idle answer") {
  QuietTracker quiet(0s);
  CHECK(quiet.observe(State::idle, QuietTracker::Clock::time_point{}));
}

TEST_CASE("the idle command's exit status maps to idle, busy, or unknown") {
  CHECK(idle_answer_from_exit(true, 0, "exited with status 0").state == State::idle);
  CHECK(idle_answer_from_exit(true, 1, "exited with status 1").state == State::busy);
  auto odd = idle_answer_from_exit(true, 2, "exited with status 2");
  CHECK(odd.state == State::unknown);
  CHECK(odd.reason == "idle command exited with status 2 (treated as busy)");
  CHECK(idle_answer_from_exit(false, 9, "killed by SIGKILL").state == State::unknown);
}
