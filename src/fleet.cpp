#include "fleet.h"

#include "etcd.h"
#include "marker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
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
namespace fs = std::filesystem;

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
  const json::value* max = doc.if_contains("max_restarting");
  const int most = max != nullptr && max->is_int64() ? static_cast<int>(std::clamp<std::int64_t>(max->as_int64(), 0, 1000)) : 0;
  return SlotHolder{slot_number(kv.key), most, text_field(doc, "host"), text_field(doc, "target"),
                    text_field(doc, "commit"), text_field(doc, "since")};
}

BadCommit bad_from(const EtcdKey& kv) {
  const json::object doc = parse_object(kv.value);
  return BadCommit{kv.key.substr(kv.key.rfind('/') + 1), text_field(doc, "host"), text_field(doc, "target"),
                   text_field(doc, "reason"), text_field(doc, "at")};
}

}  // namespace

// ---- a held slot ------------------------------------------------------------------------------

using SteadyClock = std::chrono::steady_clock;

struct FleetSlot::Keeper {
  std::shared_ptr<EtcdClient> client;
  std::int64_t lease = 0;
  int index = 0;
  std::string target;
  Duration every{};                    // between renewals, and the most one may take
  asio::steady_timer timer;
  SteadyClock::time_point valid_until; // the lease lasts at least until then, as etcd last said
  bool lost = false;                   // etcd said the lease is gone
  bool stopped = false;
  bool kept = false;                   // dropped unreleased on purpose (keep())
};

namespace {

/// Renews the slot's lease until the slot is released or dropped: every `every`, each renewal cut
/// off after `every`, so that a black-holed endpoint costs one renewal, not the lease. etcd not
/// answering is logged once; renewals go on, since the lease outlives two missed ones.
asio::awaitable<void> keep_renewing(std::shared_ptr<FleetSlot::Keeper> keeper) {
  bool failing = false;
  auto next = SteadyClock::now() + keeper->every;
  for (;;) {
    keeper->timer.expires_at(next);
    auto wait = keeper->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_await std::move(wait);
    if (keeper->stopped) co_return;
    const auto asked = SteadyClock::now();
    next = asked + keeper->every;
    try {
      auto renew = within(keeper->client->keep_alive(keeper->lease), keeper->every);
      const std::int64_t ttl = co_await std::move(renew);
      if (keeper->stopped) co_return;
      if (ttl <= 0) {
        keeper->lost = true;
        spdlog::error("{}: fleet slot {} is lost: its lease ran out (etcd unreachable for longer than lease_ttl?); "
                      "no restart is started on it",
                      keeper->target, keeper->index);
        co_return;
      }
      keeper->valid_until = asked + std::chrono::seconds(ttl);
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

/// How long a release that did not reach etcd is retried in the background. etcd renews every
/// lease when it comes back (a restarted etcd gives each its whole TTL again), so without a retry
/// the slot would stay taken for up to lease_ttl after etcd returns.
constexpr Duration kReleaseRetries{10 * 60 * 1000};

/// etcd says the lease does not exist (any more): its slot is free.
bool lease_gone(const EtcdError& e) { return e.status() == 404; }

asio::awaitable<void> retry_release(std::shared_ptr<FleetSlot::Keeper> keeper) {
  const auto give_up = SteadyClock::now() + kReleaseRetries;
  while (SteadyClock::now() < give_up) {
    keeper->timer.expires_after(Duration(1000));
    auto wait = keeper->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_await std::move(wait);
    try {
      auto revoke = keeper->client->revoke(keeper->lease);
      co_await std::move(revoke);
      spdlog::info("{}: released fleet slot {} (etcd answers again)", keeper->target, keeper->index);
      co_return;
    } catch (const EtcdError& e) {
      if (lease_gone(e)) co_return;
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
  if (keeper_->kept) return;
  // Dropped unreleased (a take whose answer came too late): nobody restarts on it, so free it.
  auto release = [](std::shared_ptr<Keeper> keeper) -> asio::awaitable<void> {
    try {
      auto revoke = keeper->client->revoke(keeper->lease);
      co_await std::move(revoke);
    } catch (const EtcdError&) {
      // It runs out by itself.
    }
  };
  asio::co_spawn(keeper_->timer.get_executor(), release(keeper_), asio::detached);
}

void FleetSlot::keep() { keeper_->kept = true; }

int FleetSlot::index() const { return keeper_->index; }

std::int64_t FleetSlot::lease() const { return keeper_->lease; }

bool FleetSlot::valid() const {
  return !keeper_->lost && !keeper_->stopped && SteadyClock::now() + keeper_->every < keeper_->valid_until;
}

asio::awaitable<void> FleetSlot::release() {
  if (keeper_->stopped) co_return;
  keeper_->stopped = true;
  keeper_->timer.cancel();
  try {
    auto revoke = keeper_->client->revoke(keeper_->lease);
    co_await std::move(revoke);
    spdlog::info("{}: released fleet slot {}", keeper_->target, keeper_->index);
  } catch (const EtcdError& e) {
    if (lease_gone(e)) co_return;  // it ran out: the slot is free
    spdlog::warn("{}: cannot release fleet slot {}: {}; retrying every second until etcd answers (or the lease "
                 "runs out)", keeper_->target, keeper_->index, e.what());
    asio::co_spawn(keeper_->timer.get_executor(), retry_release(keeper_), asio::detached);
  }
}

// ---- the group ---------------------------------------------------------------------------------

/// publish()'s latest outcome per target not yet written, and whether a write is under way.
struct Fleet::Outbox {
  std::map<std::string, std::string> latest;  // target -> the value to write
  std::map<std::string, bool> writing;
};

Fleet::Fleet(const FleetConfig& config, asio::any_io_executor executor)
    : config_(config),
      executor_(executor),
      client_(std::make_shared<EtcdClient>(executor, config)),
      prefix_("deploy-sentinel/" + config.group + "/"),
      outbox_(std::make_shared<Outbox>()) {}

asio::awaitable<Fleet::Attempt> Fleet::look(const std::string& target, std::int64_t stale_lease, int& free_index) {
  Attempt attempt;
  free_index = -1;
  auto list = client_->list(key("slot/"));
  std::vector<EtcdKey> taken = co_await std::move(list);
  std::vector<SlotHolder> holders;
  for (const EtcdKey& kv : taken) {
    SlotHolder holder = holder_from(kv);
    if (stale_lease != 0 && kv.lease == stale_lease) {
      // Left by this target's run that was stopped (its record names the lease): nobody else's.
      try {
        auto revoke = client_->revoke(kv.lease);
        co_await std::move(revoke);
      } catch (const EtcdError& e) {
        if (!lease_gone(e)) throw;
      }
      spdlog::warn("{}: freed fleet slot {}, left by an earlier run on this host (deploying {} since {})", target,
                   holder.slot, holder.commit.substr(0, 12), holder.since);
      continue;
    }
    holders.push_back(std::move(holder));
  }
  // Hosts whose configs disagree on max_restarting: the smallest of them counts, and every holder
  // counts against it, whatever its slot's number.
  int most = config_.max_restarting;
  for (const SlotHolder& h : holders) {
    if (h.max_restarting > 0 && h.max_restarting != config_.max_restarting) {
      const std::string mismatch = "host " + h.host + " of group " + config_.group + " has max_restarting = " +
                                   std::to_string(h.max_restarting) + ", this host " +
                                   std::to_string(config_.max_restarting);
      if (mismatch != mismatch_noted_) spdlog::warn("{}: {}: the smaller counts; make them agree", target, mismatch);
      mismatch_noted_ = mismatch;
      most = std::min(most, h.max_restarting);
    }
  }
  std::vector<bool> held(static_cast<std::size_t>(config_.max_restarting), false);
  for (const SlotHolder& h : holders) {
    if (h.slot >= 0 && h.slot < config_.max_restarting) held[static_cast<std::size_t>(h.slot)] = true;
  }
  const auto first_free = std::find(held.begin(), held.end(), false);
  if (static_cast<int>(holders.size()) < most && first_free != held.end()) {
    free_index = static_cast<int>(first_free - held.begin());
    attempt.free = true;
  } else {
    std::string text;
    for (const SlotHolder& h : holders) {
      if (!text.empty()) text += ", ";
      text += h.host + " (" + h.target + ", deploying " + h.commit.substr(0, 12) + " since " + h.since + ")";
    }
    attempt.held_by = text;
  }
  co_return attempt;
}

asio::awaitable<Fleet::Attempt> Fleet::look_for_slot(std::string target, std::int64_t stale_lease) {
  int free_index = -1;
  auto looking = look(target, stale_lease, free_index);
  co_return co_await std::move(looking);
}

asio::awaitable<Fleet::Attempt> Fleet::try_take_slot(std::string target, std::string commit, std::int64_t stale_lease) {
  int index = -1;
  auto looking = look(target, stale_lease, index);
  Attempt attempt = co_await std::move(looking);
  if (!attempt.free) co_return attempt;

  auto grant = client_->grant_lease(config_.lease_ttl);
  const auto granted = SteadyClock::now();
  const std::int64_t lease = co_await std::move(grant);
  untaken_[target] = lease;  // until a FleetSlot owns it, or it is revoked
  const json::object holder{{"host", config_.host},     {"target", target},
                            {"commit", commit},         {"since", now_utc()},
                            {"max_restarting", config_.max_restarting}};
  // One transaction: put only if nobody created the key meanwhile, so that two hosts can never
  // both take the last slot.
  auto create = client_->create(key("slot/" + std::to_string(index)), json::serialize(holder), lease);
  if (!co_await std::move(create)) {
    untaken_.erase(target);
    try {
      auto revoke = client_->revoke(lease);
      co_await std::move(revoke);
    } catch (const EtcdError&) {
      // Unused, it runs out by itself.
    }
    auto again = look(target, 0, index);
    Attempt lost = co_await std::move(again);
    lost.free = false;
    if (lost.held_by.empty()) lost.held_by = "another host, just now";
    co_return lost;
  }
  const Duration every = std::max(config_.lease_ttl / 3, Duration(500));
  auto keeper = std::make_shared<FleetSlot::Keeper>(FleetSlot::Keeper{
      client_, lease, index, target, every, asio::steady_timer(executor_), granted + config_.lease_ttl, false, false,
      false});
  attempt.slot = std::make_unique<FleetSlot>(std::move(keeper));
  untaken_.erase(target);
  co_return attempt;
}

asio::awaitable<std::unique_ptr<FleetSlot>> Fleet::adopt_slot(std::string target, std::int64_t lease) {
  auto list = client_->list(key("slot/"));
  std::vector<EtcdKey> taken = co_await std::move(list);
  const auto mine = std::find_if(taken.begin(), taken.end(), [&](const EtcdKey& kv) { return kv.lease == lease; });
  if (mine == taken.end()) co_return nullptr;
  const auto asked = SteadyClock::now();
  auto renew = client_->keep_alive(lease);
  const std::int64_t ttl = co_await std::move(renew);
  if (ttl <= 0) co_return nullptr;
  const Duration every = std::max(config_.lease_ttl / 3, Duration(500));
  const int index = holder_from(*mine).slot;
  auto keeper = std::make_shared<FleetSlot::Keeper>(FleetSlot::Keeper{
      client_, lease, index, target, every, asio::steady_timer(executor_), asked + std::chrono::seconds(ttl), false,
      false, false});
  spdlog::info("{}: holds fleet slot {} again (its lease outlived the stop)", target, index);
  co_return std::make_unique<FleetSlot>(std::move(keeper));
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

void Fleet::mark_bad_then_release(std::string commit, std::string target, std::string reason,
                                  std::unique_ptr<FleetSlot> slot, fs::path pending) {
  if (slot) slot->keep();  // not released until the record is in etcd, not even at a shutdown
  auto retry = [](std::shared_ptr<EtcdClient> client, std::string key, std::string value, std::string target,
                  std::unique_ptr<FleetSlot> slot, fs::path pending) -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
      timer.expires_after(Duration(1000));
      auto wait = timer.async_wait(asio::as_tuple(asio::use_awaitable));
      co_await std::move(wait);
      try {
        auto put = client->put(key, value);
        co_await std::move(put);
        std::error_code ignored;
        if (!pending.empty()) fs::remove(pending, ignored);
        spdlog::info("{}: recorded the failed commit for the group now that etcd answers", target);
        break;
      } catch (const EtcdError& e) {
        if (e.status() >= 400 && e.status() < 500) {
          std::error_code ignored;
          if (!pending.empty()) fs::remove(pending, ignored);
          spdlog::critical("{}: etcd refuses the record of the failed commit ({}); other hosts may deploy it", target,
                           e.what());
          break;
        }
        // Still no etcd: the slot stays (renewed when etcd answers), so no host deploys the commit meanwhile.
      }
    }
    if (slot) co_await slot->release();
  };
  const json::object doc{{"host", config_.host}, {"target", target}, {"reason", reason}, {"at", now_utc()}};
  asio::co_spawn(executor_,
                 retry(client_, key("bad/" + commit), json::serialize(doc), target, std::move(slot), std::move(pending)),
                 asio::detached);
}

void Fleet::release_later(std::unique_ptr<FleetSlot> slot) {
  if (!slot) return;
  auto release = [](std::unique_ptr<FleetSlot> slot) -> asio::awaitable<void> { co_await slot->release(); };
  asio::co_spawn(executor_, release(std::move(slot)), asio::detached);
}

void Fleet::forget_untaken(const std::string& target) {
  const auto granted = untaken_.find(target);
  if (granted == untaken_.end()) return;
  auto revoke = [](std::shared_ptr<EtcdClient> client, std::int64_t lease) -> asio::awaitable<void> {
    try {
      auto call = client->revoke(lease);
      co_await std::move(call);
    } catch (const EtcdError&) {
      // It runs out by itself.
    }
  };
  asio::co_spawn(executor_, revoke(client_, granted->second), asio::detached);
  untaken_.erase(granted);
}

void Fleet::publish(const std::string& target, const Outcome& outcome, const std::string& running) {
  json::object doc{{"host", config_.host},     {"target", target},         {"running", running},
                   {"result", outcome.result}, {"commit", outcome.commit}, {"reason", outcome.reason},
                   {"at", outcome.at}};
  outbox_->latest[target] = json::serialize(doc);
  if (outbox_->writing[target]) return;  // the running write takes it next
  outbox_->writing[target] = true;
  auto write = [](std::shared_ptr<EtcdClient> client, std::shared_ptr<Outbox> outbox, std::string key,
                  std::string target) -> asio::awaitable<void> {
    while (outbox->latest.contains(target)) {
      std::string value = std::move(outbox->latest[target]);
      outbox->latest.erase(target);
      try {
        auto put = client->put(key, std::move(value));
        co_await std::move(put);
      } catch (const EtcdError& e) {
        spdlog::warn("{}: cannot record this outcome in etcd for `fleet status`: {}", target, e.what());
      }
    }
    outbox->writing[target] = false;
  };
  asio::co_spawn(executor_, write(client_, outbox_, key("host/" + config_.host + "/" + target), target),
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
