#include "fleet.h"

#include "marker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace sentinel {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE

std::string now_utc() { return format_utc(std::chrono::system_clock::now()); }

std::string text_field(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  return value != nullptr && value->is_string() ? std::string(value->as_string()) : std::string();
}

json::object parse_object(const std::string& text) {
  boost::system::error_code ec;
  json::value doc = json::parse(text, ec);
  return !ec && doc.is_object() ? std::move(doc.as_object()) : json::object();
}

/// The number after the last '/' of a slot key, or -1.
int slot_number(const std::string& key) {
  const std::size_t slash = key.rfind('/');
  int n = -1;
  if (slash != std::string::npos) std::sscanf(key.c_str() + slash + 1, "%d", &n);
  return n;
}

SlotHolder holder_from(const EtcdKey& kv) {
  const json::object doc = parse_object(kv.value);
  return SlotHolder{slot_number(kv.key), text_field(doc, "host"), text_field(doc, "target"),
                    text_field(doc, "commit"), text_field(doc, "since")};
}

BadCommit bad_from(const EtcdKey& kv) {
  const json::object doc = parse_object(kv.value);
  return BadCommit{kv.key.substr(kv.key.rfind('/') + 1), text_field(doc, "host"), text_field(doc, "target"),
                   text_field(doc, "reason"), text_field(doc, "at")};
}

}  // namespace

// ---- a held slot ------------------------------------------------------------------------------

struct FleetSlot::Keeper {
  std::shared_ptr<EtcdClient> client;
  std::int64_t lease = 0;
  int index = 0;
  std::string target;
  Duration every{};
  asio::steady_timer timer;
  bool stopped = false;
};

namespace {

/// Renews the slot's lease until the slot is released or dropped. An etcd that does not answer
/// is logged once; renewals go on, since the lease outlives one missed renewal by two more.
asio::awaitable<void> keep_renewing(std::shared_ptr<FleetSlot::Keeper> keeper) {
  bool failing = false;
  for (;;) {
    keeper->timer.expires_after(keeper->every);
    auto wait = keeper->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_await std::move(wait);
    if (keeper->stopped) co_return;
    try {
      auto renew = keeper->client->keep_alive(keeper->lease);
      const std::int64_t ttl = co_await std::move(renew);
      if (keeper->stopped) co_return;
      if (ttl <= 0) {
        spdlog::error("{}: fleet slot {} is lost: its lease ran out (etcd unreachable for longer than lease_ttl?); "
                      "another host may restart at the same time as this one",
                      keeper->target, keeper->index);
        co_return;
      }
      if (failing) spdlog::info("{}: fleet slot {} renewed again", keeper->target, keeper->index);
      failing = false;
    } catch (const EtcdError& e) {
      if (keeper->stopped) co_return;
      if (!failing) {
        spdlog::warn("{}: cannot renew fleet slot {}: {}; the slot frees itself if this lasts lease_ttl",
                     keeper->target, keeper->index, e.what());
      }
      failing = true;
    }
  }
}

}  // namespace

FleetSlot::FleetSlot(std::shared_ptr<Keeper> keeper) : keeper_(std::move(keeper)) {
  asio::co_spawn(keeper_->timer.get_executor(), keep_renewing(keeper_), asio::detached);
}

FleetSlot::~FleetSlot() {
  if (keeper_->stopped) return;  // released (its retry, if any, uses the timer now)
  keeper_->stopped = true;
  keeper_->timer.cancel();
}

int FleetSlot::index() const { return keeper_->index; }

namespace {

/// How long a release that did not reach etcd is retried in the background. etcd renews every
/// lease when it comes back (a restarted etcd gives each its whole TTL again), so without a retry
/// the slot would stay taken for up to lease_ttl after etcd returns.
constexpr Duration kReleaseRetries{10 * 60 * 1000};

asio::awaitable<void> retry_release(std::shared_ptr<FleetSlot::Keeper> keeper) {
  const auto give_up = std::chrono::steady_clock::now() + kReleaseRetries;
  while (std::chrono::steady_clock::now() < give_up) {
    keeper->timer.expires_after(Duration(1000));
    auto wait = keeper->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_await std::move(wait);
    try {
      auto revoke = keeper->client->revoke(keeper->lease);
      co_await std::move(revoke);
      spdlog::info("{}: released fleet slot {} (etcd answers again)", keeper->target, keeper->index);
      co_return;
    } catch (const EtcdError& e) {
      if (e.answered()) co_return;  // etcd knows the lease no more: the slot is free
    }
  }
}

}  // namespace

asio::awaitable<void> FleetSlot::release() {
  if (keeper_->stopped) co_return;
  keeper_->stopped = true;
  keeper_->timer.cancel();
  try {
    auto revoke = keeper_->client->revoke(keeper_->lease);
    co_await std::move(revoke);
    spdlog::info("{}: released fleet slot {}", keeper_->target, keeper_->index);
  } catch (const EtcdError& e) {
    if (e.answered()) co_return;  // etcd knows the lease no more (it ran out): the slot is free
    spdlog::warn("{}: cannot release fleet slot {}: {}; retrying every second until etcd answers (or the lease "
                 "runs out)", keeper_->target, keeper_->index, e.what());
    asio::co_spawn(keeper_->timer.get_executor(), retry_release(keeper_), asio::detached);
  }
}

// ---- the group ---------------------------------------------------------------------------------

Fleet::Fleet(const FleetConfig& config, asio::any_io_executor executor)
    : config_(config),
      executor_(executor),
      client_(std::make_shared<EtcdClient>(executor, config)),
      prefix_("deploy-sentinel/" + config.group + "/") {}

asio::awaitable<Fleet::Attempt> Fleet::try_take_slot(std::string target, std::string commit) {
  Attempt attempt;
  auto list = client_->list(key("slot/"));
  std::vector<EtcdKey> taken = co_await std::move(list);
  for (const EtcdKey& kv : taken) {
    SlotHolder holder = holder_from(kv);
    if (holder.host == config_.host && holder.target == target) {
      // This target deploys one commit at a time, and one sentinel runs per host: a slot it
      // holds now was left by a run that was killed, or whose release did not reach etcd.
      auto revoke = client_->revoke(kv.lease);
      co_await std::move(revoke);
      spdlog::warn("{}: freed fleet slot {}, left by an earlier run on this host (deploying {} since {})", target,
                   holder.slot, holder.commit.substr(0, 12), holder.since);
      continue;
    }
    attempt.holders.push_back(std::move(holder));
  }
  std::vector<bool> held(static_cast<std::size_t>(config_.max_restarting), false);
  for (const SlotHolder& holder : attempt.holders) {
    if (holder.slot >= 0 && holder.slot < config_.max_restarting) held[static_cast<std::size_t>(holder.slot)] = true;
  }
  const auto free = std::find(held.begin(), held.end(), false);
  if (free == held.end()) co_return attempt;

  const int index = static_cast<int>(free - held.begin());
  auto grant = client_->grant_lease(config_.lease_ttl);
  const std::int64_t lease = co_await std::move(grant);
  const json::object holder{{"host", config_.host}, {"target", target}, {"commit", commit}, {"since", now_utc()}};
  // One transaction: put only if nobody created the key meanwhile, so that two hosts can never
  // both take the last slot.
  auto create = client_->create(key("slot/" + std::to_string(index)), json::serialize(holder), lease);
  if (!co_await std::move(create)) {
    try {
      auto revoke = client_->revoke(lease);
      co_await std::move(revoke);
    } catch (const EtcdError&) {
      // Unused, it runs out by itself.
    }
    auto again = client_->list(key("slot/"));
    std::vector<EtcdKey> now_taken = co_await std::move(again);
    attempt.holders.clear();
    for (const EtcdKey& kv : now_taken) attempt.holders.push_back(holder_from(kv));
    co_return attempt;
  }
  auto keeper = std::make_shared<FleetSlot::Keeper>(FleetSlot::Keeper{
      client_, lease, index, target, std::max(config_.lease_ttl / 3, Duration(500)), asio::steady_timer(executor_), false});
  attempt.slot = std::make_unique<FleetSlot>(std::move(keeper));
  attempt.holders.clear();
  co_return attempt;
}

asio::awaitable<std::optional<BadCommit>> Fleet::bad_commit(std::string commit) {
  auto get = client_->get(key("bad/" + commit));
  std::optional<EtcdKey> kv = co_await std::move(get);
  if (!kv) co_return std::nullopt;
  co_return bad_from(*kv);
}

asio::awaitable<void> Fleet::mark_bad(std::string commit, std::string target, std::string reason) {
  const json::object doc{{"host", config_.host}, {"target", target}, {"reason", reason}, {"at", now_utc()}};
  auto put = client_->put(key("bad/" + commit), json::serialize(doc));
  co_await std::move(put);
}

void Fleet::publish(const std::string& target, const Outcome& outcome, const std::string& running) {
  json::object doc{{"host", config_.host},     {"target", target},         {"running", running},
                   {"result", outcome.result}, {"commit", outcome.commit}, {"reason", outcome.reason},
                   {"at", outcome.at}};
  auto write = [](std::shared_ptr<EtcdClient> client, std::string key, std::string value,
                  std::string target) -> asio::awaitable<void> {
    try {
      auto put = client->put(std::move(key), std::move(value));
      co_await std::move(put);
    } catch (const EtcdError& e) {
      spdlog::warn("{}: cannot record this outcome in etcd for `fleet status`: {}", target, e.what());
    }
  };
  asio::co_spawn(executor_, write(client_, key("host/" + config_.host + "/" + target), json::serialize(doc), target),
                 asio::detached);
}

asio::awaitable<Fleet::View> Fleet::view() {
  View view;
  auto list = client_->list(prefix_);
  std::vector<EtcdKey> keys = co_await std::move(list);
  for (const EtcdKey& kv : keys) {
    const std::string_view rest = std::string_view(kv.key).substr(prefix_.size());
    if (rest.starts_with("slot/")) view.slots.push_back(holder_from(kv));
    if (rest.starts_with("bad/")) view.bad.push_back(bad_from(kv));
    if (rest.starts_with("host/")) view.hosts.push_back(parse_object(kv.value));
  }
  co_return view;
}

std::string Fleet::describe(const std::vector<SlotHolder>& holders) {
  std::string text;
  for (const SlotHolder& h : holders) {
    if (!text.empty()) text += ", ";
    text += h.host + " (" + h.target + ", deploying " + h.commit.substr(0, 12) + " since " + h.since + ")";
  }
  return text.empty() ? "nobody (yet)" : text;
}

// ---- fleet status -----------------------------------------------------------------------------

int print_fleet_status(const Config& config, bool as_json) {
  if (!config.fleet) {
    std::cerr << config.source.string() << ": has no [fleet] section, so this sentinel is in no group\n";
    return ConfigError::kExitCode;
  }
  asio::io_context ctx;
  Fleet fleet(*config.fleet, ctx.get_executor());
  auto future = asio::co_spawn(ctx, fleet.view(), asio::use_future);
  ctx.run();
  Fleet::View view;
  try {
    view = future.get();
  } catch (const EtcdError& e) {
    std::cerr << "cannot read group " << config.fleet->group << " from etcd: " << e.what() << "\n";
    return kExitUnavailable;
  }
  if (as_json) {
    json::array slots, bad;
    for (const SlotHolder& h : view.slots) {
      slots.push_back(json::object{{"slot", h.slot}, {"host", h.host}, {"target", h.target}, {"commit", h.commit},
                                   {"since", h.since}});
    }
    for (const BadCommit& b : view.bad) {
      bad.push_back(json::object{{"commit", b.commit}, {"host", b.host}, {"target", b.target}, {"reason", b.reason},
                                 {"at", b.at}});
    }
    json::array hosts(view.hosts.begin(), view.hosts.end());
    const json::object doc{{"group", config.fleet->group},
                           {"max_restarting", config.fleet->max_restarting},
                           {"slots", std::move(slots)},
                           {"hosts", std::move(hosts)},
                           {"bad", std::move(bad)}};
    std::cout << json::serialize(doc) << "\n";
    return 0;
  }
  std::cout << "group " << config.fleet->group << ": " << view.slots.size() << " of " << config.fleet->max_restarting
            << " restart slots held\n";
  for (const SlotHolder& h : view.slots) {
    std::cout << "  slot " << h.slot << ": " << h.host << " (" << h.target << ") deploying " << h.commit.substr(0, 12)
              << " since " << h.since << "\n";
  }
  std::cout << "hosts:\n";
  if (view.hosts.empty()) std::cout << "  none has recorded an outcome yet\n";
  for (const json::object& host : view.hosts) {
    const std::string reason = text_field(host, "reason");
    const std::string running = text_field(host, "running");
    std::cout << "  " << text_field(host, "host") << " (" << text_field(host, "target") << "): runs "
              << (running.empty() ? "?" : running.substr(0, 12)) << "; last " << text_field(host, "result") << " "
              << text_field(host, "commit").substr(0, 12) << " at " << text_field(host, "at")
              << (reason.empty() ? "" : ": " + quoted_for_log(reason, '"', 400)) << "\n";
  }
  std::cout << "bad commits:" << (view.bad.empty() ? " none\n" : "\n");
  for (const BadCommit& b : view.bad) {
    std::cout << "  " << b.commit << ": reverted on host " << b.host << " (" << b.target << ") at " << b.at << ": "
              << quoted_for_log(b.reason, '"', 400) << "\n";
  }
  return 0;
}

}  // namespace sentinel
