#pragma once
// Fleet mode ([fleet]): the hosts of one service share restart slots in etcd, so that at most
// `max_restarting` of them restart at once, and a commit reverted on one host is refused by the
// others. etcd does the coordinating; the sentinels never talk to each other.
//
// Keys, under "deploy-sentinel/<group>/":
//   slot/<n>              who restarts now (n < max_restarting), bound to that host's lease: a
//                         host that dies frees its slot when the lease runs out
//   bad/<commit>          a commit reverted on some host: {"host","target","reason","at"}
//   host/<host>/<target>  that target's last outcome and the commit it runs since:
//                         {"host","target","running","result","commit","reason","at"}

#include "config.h"
#include "state_store.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sentinel {

class EtcdClient;

/// Someone holding a restart slot, as its key says.
struct SlotHolder {
  int slot = 0;
  int max_restarting = 0;  // as the holder's config says (0 = not said)
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

/// A held restart slot. Its lease is renewed every third of its TTL (each renewal bounded to that
/// third) until release(); a slot dropped without release() stops renewing, and frees itself
/// when its lease runs out.
class FleetSlot {
 public:
  struct Keeper;
  explicit FleetSlot(std::shared_ptr<Keeper> keeper);
  ~FleetSlot();
  FleetSlot(const FleetSlot&) = delete;
  FleetSlot& operator=(const FleetSlot&) = delete;
  int index() const;
  std::int64_t lease() const;
  /// The lease is known to last at least one more renewal period: etcd renewed it lately and never
  /// said it was gone. A slot that is not valid may be someone else's by now: restart nothing on it.
  bool valid() const;
  /// Revokes the lease, which frees the slot at once. An etcd that does not answer is retried every
  /// second in the background (a restarted etcd gives every lease its whole TTL again).
  boost::asio::awaitable<void> release();
  /// Dropped from now on, the slot is not revoked: it stops being renewed and stays taken until its
  /// lease runs out (or a later run takes it back by its lease). Without keep(), a slot dropped
  /// unreleased is released in the background.
  void keep();

 private:
  std::shared_ptr<Keeper> keeper_;
};

class Fleet {
 public:
  Fleet(const FleetConfig& config, boost::asio::any_io_executor executor);

  /// What one look at the slots found: the slot taken (by try_take_slot), or why none was.
  struct Attempt {
    std::unique_ptr<FleetSlot> slot;
    bool free = false;     // a slot looked free (look_for_slot; try_take_slot may lose it to another host)
    std::string held_by;   // when none is free: who holds them, for messages
  };
  /// Takes a free slot for `target` deploying `commit`, without waiting. A slot held under
  /// `stale_lease` (this target's lease from a run that was stopped, read from its record) is
  /// revoked first. Throws EtcdError.
  boost::asio::awaitable<Attempt> try_take_slot(std::string target, std::string commit, std::int64_t stale_lease);
  /// Whether a slot is free now, without taking it. Throws EtcdError.
  boost::asio::awaitable<Attempt> look_for_slot(std::string target, std::int64_t stale_lease);
  /// The slot held under `lease` (this target's, from a run that was stopped in the middle of its
  /// restart), taken over if the lease still lives; nullptr otherwise. Throws EtcdError.
  boost::asio::awaitable<std::unique_ptr<FleetSlot>> adopt_slot(std::string target, std::int64_t lease);
  /// The group's record of `commit` failing, if any. Throws EtcdError.
  boost::asio::awaitable<std::optional<BadCommit>> bad_commit(std::string commit);
  /// Records `commit` as failed on this host. Throws EtcdError.
  boost::asio::awaitable<void> mark_bad(std::string commit, std::string target, std::string reason);
  /// For a bad commit whose record did not reach etcd: keeps `slot` (renewed) and retries the record
  /// every second in the background until etcd has it, then gives the slot back and removes
  /// `pending` (the record kept on disk, so that a stop meanwhile does not lose it); so no other
  /// host takes the slot before it can learn that the commit failed. etcd refusing the record
  /// (4xx) ends the retries, loudly.
  void mark_bad_then_release(std::string commit, std::string target, std::string reason,
                             std::unique_ptr<FleetSlot> slot, std::filesystem::path pending);
  /// Releases `slot` in the background (for a caller that holds locks others wait for).
  void release_later(std::unique_ptr<FleetSlot> slot);
  /// After `target`'s take was cut off by a timeout: revokes the lease it granted, if the slot never
  /// reached the caller.
  void forget_untaken(const std::string& target);
  /// Records a target's outcome and the commit production runs since (`running`, its known-good)
  /// as this host's latest, in the background, one write at a time per target (a newer outcome
  /// replaces one not yet written); a failure is logged and the next outcome writes it again.
  void publish(const std::string& target, const Outcome& outcome, const std::string& running);
  /// Everything the group's keys hold, for `fleet status`. Throws EtcdError.
  struct View {
    std::vector<SlotHolder> slots;
    std::vector<boost::json::object> hosts;  // as stored, in key order
    std::vector<BadCommit> bad;
  };
  boost::asio::awaitable<View> view();

  const FleetConfig& config() const { return config_; }

 private:
  std::string key(std::string_view rest) const { return prefix_ + std::string(rest); }
  /// The slots as etcd holds them, after freeing one held under `stale_lease`.
  boost::asio::awaitable<Attempt> look(const std::string& target, std::int64_t stale_lease, int& free_index);
  struct Outbox;
  std::map<std::string, std::int64_t> untaken_;  // per target: granted by its take under way, not yet in a FleetSlot
  const FleetConfig& config_;
  boost::asio::any_io_executor executor_;
  std::shared_ptr<EtcdClient> client_;
  std::string prefix_;  // "deploy-sentinel/<group>/"
  std::shared_ptr<Outbox> outbox_;  // publish()'s latest outcome per target, and whether a write runs
  std::string mismatch_noted_;      // the disagreement on max_restarting last logged
};

/// `deploy-sentinel fleet status`: the group as the config's [fleet] names it, for people
/// (or as JSON). 0, or 69 when etcd cannot be reached, 78 without [fleet].
int print_fleet_status(const Config& config, bool as_json);

}  // namespace sentinel
