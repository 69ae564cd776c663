#pragma once
// Fleet mode ([fleet]): the hosts of one service share restart slots in etcd, so that at most
// `max_restarting` of them restart at once, and a commit reverted on one host is refused by the
// others. etcd does the coordinating; the sentinels never talk to each other.
//
// Keys, under "deploy-sentinel/<group>/":
//   slot/<n>              who restarts now (n < max_restarting), bound to that host's lease: a
//                         host that dies frees its slot when the lease runs out
//   bad/<commit>          a commit reverted on some host: {"host","target","reason","at"}
//   host/<host>/<target>  that target's last outcome: {"host","target","result","commit","reason","at"}

#include "config.h"
#include "etcd.h"
#include "state_store.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sentinel {

/// Someone holding a restart slot, as its key says.
struct SlotHolder {
  int slot = 0;
  std::string host;
  std::string target;
  std::string commit;
  std::string since;  // UTC
};

/// A commit the group has seen fail.
struct BadCommit {
  std::string commit;
  std::string host;
  std::string target;
  std::string reason;
  std::string at;
};

/// A held restart slot. The lease is renewed every third of its TTL until release(); a holder
/// dropped without release() stops renewing, and the slot frees itself within lease_ttl.
class FleetSlot {
 public:
  struct Keeper;
  explicit FleetSlot(std::shared_ptr<Keeper> keeper);
  ~FleetSlot();
  FleetSlot(const FleetSlot&) = delete;
  FleetSlot& operator=(const FleetSlot&) = delete;
  int index() const;
  /// Revokes the lease, which frees the slot at once. An etcd that does not answer is logged:
  /// the slot then frees itself when the lease runs out.
  boost::asio::awaitable<void> release();

 private:
  std::shared_ptr<Keeper> keeper_;
};

class Fleet {
 public:
  Fleet(const FleetConfig& config, boost::asio::any_io_executor executor);

  /// What one try for a slot found: the slot, or who holds every slot.
  struct Attempt {
    std::unique_ptr<FleetSlot> slot;
    std::vector<SlotHolder> holders;
  };
  /// Takes a free slot for `target` deploying `commit`, without waiting. Throws EtcdError.
  boost::asio::awaitable<Attempt> try_take_slot(std::string target, std::string commit);
  /// The group's record of `commit` failing, if any. Throws EtcdError.
  boost::asio::awaitable<std::optional<BadCommit>> bad_commit(std::string commit);
  /// Records `commit` as failed on this host. Throws EtcdError.
  boost::asio::awaitable<void> mark_bad(std::string commit, std::string target, std::string reason);
  /// Records a target's outcome as this host's latest, in the background; a failure is logged
  /// (the next outcome writes it again).
  void publish(const std::string& target, const Outcome& outcome);
  /// Everything the group's keys hold, for `fleet status`. Throws EtcdError.
  struct View {
    std::vector<SlotHolder> slots;
    std::vector<boost::json::object> hosts;  // as stored, in key order
    std::vector<BadCommit> bad;
  };
  boost::asio::awaitable<View> view();

  const FleetConfig& config() const { return config_; }
  /// "host-1 (prod, deploying 3f2c1a9e0b4d since ...)" for each holder, for messages.
  static std::string describe(const std::vector<SlotHolder>& holders);

 private:
  std::string key(std::string_view rest) const { return prefix_ + std::string(rest); }
  const FleetConfig& config_;
  boost::asio::any_io_executor executor_;
  std::shared_ptr<EtcdClient> client_;
  std::string prefix_;  // "deploy-sentinel/<group>/"
};

/// `deploy-sentinel fleet status`: the group as the config's [fleet] names it, for people
/// (or as JSON). 0, or 69 when etcd cannot be reached, 78 without [fleet].
int print_fleet_status(const Config& config, bool as_json);

}  // namespace sentinel
