#include "hooks.h"

#include <doctest/doctest.h>

#include <algorithm>

using namespace sentinel;

namespace {

TargetConfig target_with_hooks() {
  TargetConfig target;
  target.name = "prod";
  target.checkout = "/srv/app";
  target.env = {{"NODE_ENV", "production"}, {"DEPLOY_TARGET", "spoofed"}};
  target.hooks = HooksConfig{};
  target.hooks->on_deployed = {"notify", "deployed"};
  target.hooks->on_failed = {"page"};
  target.hooks->timeout = std::chrono::seconds(5);
  return target;
}

bool has(const std::vector<std::string>& env, const std::string& entry) {
  return std::find(env.begin(), env.end(), entry) != env.end();
}

}  // namespace

TEST_CASE("a hook runs its argv in the checkout with DEPLOY_* over the target's environment and its timeout") {
  const TargetConfig target = target_with_hooks();
  std::optional<RunSpec> spec = hook_spec(target, {"deployed", "bbbb", "aaaa", ""});
  REQUIRE(spec.has_value());
  CHECK(spec->argv == std::vector<std::string>{"notify", "deployed"});
  CHECK(spec->cwd == "/srv/app");
  CHECK(spec->timeout == std::chrono::seconds(5));
  CHECK(has(spec->env, "NODE_ENV=production"));
  CHECK(has(spec->env, "DEPLOY_TARGET=prod"));  // the sentinel's word wins over the target's env
  CHECK_FALSE(has(spec->env, "DEPLOY_TARGET=spoofed"));
  CHECK(has(spec->env, "DEPLOY_RESULT=deployed"));
  CHECK(has(spec->env, "DEPLOY_COMMIT=bbbb"));
  CHECK(has(spec->env, "DEPLOY_PREVIOUS=aaaa"));
  CHECK(has(spec->env, "DEPLOY_REASON="));
}

TEST_CASE("no hook runs for an outcome without one, for cycles and refusals, or without [target.hooks]") {
  const TargetConfig target = target_with_hooks();
  CHECK_FALSE(hook_spec(target, {"reverted", "a", "b", "why"}).has_value());
  CHECK_FALSE(hook_spec(target, {"cycle", "", "", ""}).has_value());
  CHECK_FALSE(hook_spec(target, {"rejected", "", "", "bad marker"}).has_value());
  CHECK(hook_spec(target, {"failed", "a", "b", "why"}).has_value());
  TargetConfig plain;
  plain.name = "dev";
  CHECK_FALSE(hook_spec(plain, {"deployed", "a", "b", ""}).has_value());
}
