// What the CDR engine accepts: the allowlist, the action taken on forbidden constructs, and limits.
//
// A Policy is an immutable value after construction and may be shared between threads. The proxy and
// the command line build one from the YAML policy file (config/), already narrowed to the repository
// at hand; cdr/ never reads files or YAML itself.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace zoogate::cdr {

// Every limit on hostile input. Each is named in the policy file under `limits:` with the same name.
struct Limits {
  uint64_t max_opcodes = 100'000'000;         // opcodes executed in one pickle
  uint64_t max_stack_depth = 1'000'000;       // items on the VM stack, all MARK levels together
  uint64_t max_nesting_depth = 1'000;         // MARK levels open at once, and container nesting depth
  uint64_t max_memo_entries = 10'000'000;     // distinct memo slots written
  uint64_t max_memo_index = 100'000'000;      // largest memo index a PUT/GET may name
  uint64_t max_string_length = 256ull << 20;  // one str/bytes operand, in bytes
  uint64_t max_int_bytes = 4096;              // one integer operand (LONG1/LONG4 bytes, or decimal digits)
  uint64_t max_pickle_size = 1ull << 30;      // one pickle stream (data.pkl or a plain .pkl), in bytes
  uint64_t max_zip_entries = 100'000;         // entries in one archive
  uint64_t max_entry_size = 1ull << 40;       // uncompressed size of one archive entry, in bytes
  uint64_t max_compression_ratio = 100;       // uncompressed/compressed size of a deflated entry
  uint64_t max_tensor_count = 1'000'000;      // tensors in one checkpoint
  uint64_t max_safetensors_header_size = 100'000'000;  // JSON header of a safetensors file, in bytes
  uint64_t max_npy_header_size = 10'000;      // header of one .npy array, in bytes (numpy's own default)
};

enum class Action { kDisarm, kBlock };

// Kinds of finding that the policy maps to an action. Anything not listed here (parse errors, exceeded
// limits, unknown containers, TorchScript, an unsafe root, container tricks) always blocks.
enum class FindingKind {
  kForbiddenGlobal,        // a GLOBAL/STACK_GLOBAL/INST/OBJ naming a pair outside the allowlist
  kForbiddenCall,          // an allowlisted callable used with arguments of the wrong count or kind
  kForbiddenBuild,         // BUILD/SETITEM/APPEND on an object that does not accept it
  kForbiddenPersistentId,  // a persistent id that is not a valid storage reference
};

std::string_view to_string(FindingKind kind);
std::string_view to_string(Action action);

struct GlobalName {
  std::string module;
  std::string name;
  bool operator==(const GlobalName&) const = default;
  auto operator<=>(const GlobalName&) const = default;
};

struct Policy {
  std::string version = "builtin-1";
  Action forbidden_global = Action::kDisarm;
  Action forbidden_call = Action::kDisarm;
  Action forbidden_build = Action::kDisarm;
  Action forbidden_persistent_id = Action::kBlock;
  // Exact (module, name) pairs that the operator allowed for this repository on top of the built-in
  // allowlist. Matched exactly: never by prefix, never through dotted or dunder names.
  std::vector<GlobalName> operator_allowed_globals;
  Limits limits;

  Action action_for(FindingKind kind) const;
};

// One thing the engine refused and what it did about it.
struct Finding {
  FindingKind kind = FindingKind::kForbiddenGlobal;
  Action action = Action::kBlock;
  std::string record;     // archive entry or stream part ("archive/data.pkl", "legacy main pickle")
  uint64_t offset = 0;    // byte offset of the opcode inside that record
  std::string construct;  // "GLOBAL os.system", "REDUCE collections.OrderedDict", "BUILD on list"
  std::string reason;     // why it is refused, in words a user can act on
};

}  // namespace zoogate::cdr
