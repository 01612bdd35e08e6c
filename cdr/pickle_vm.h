// A non-executing pickle virtual machine.
//
// parse_pickle() reads one pickle stream (protocols 0 to 5) and builds a typed ValueTree. It never
// imports or calls anything: every GLOBAL is matched against an exact allowlist (the built-in one plus
// Policy::operator_allowed_globals), and REDUCE/NEWOBJ/BUILD/SETITEM(S)/APPEND(S) are checked against
// what the matched entry declares. Forbidden constructs become Findings; with Action::kDisarm the
// offending subtree is dropped from the nearest dict/list/set that holds it, with Action::kBlock (and
// for any parse error or exceeded limit) parsing fails with an Error.
//
// Pure function over its inputs; safe to call from several threads on different sources.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cdr/policy.h"
#include "cdr/value.h"
#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::cdr {

// How persistent ids (PERSID/BINPERSID) are interpreted.
enum class PersistentIdMode {
  kNone,          // plain pickles: any persistent id is a finding
  kTorchArchive,  // ('storage', torch.<T>Storage, key, location, numel) as in torch.save zip archives
  kTorchLegacy,   // ('storage', torch.<T>Storage, key, location, numel, None) of the legacy format
};

struct PickleParseOptions {
  PersistentIdMode persistent_ids = PersistentIdMode::kNone;
  std::string record_name;  // names the stream in findings and errors
  // The legacy format stacks several pickles in one file: when true, bytes after STOP are allowed and
  // PickleParse::end_offset says where the next part starts. Everywhere else trailing bytes are an error.
  bool allow_trailing_bytes = false;
};

struct PickleParse {
  ValueTree tree;
  std::vector<Finding> findings;        // every disarmed construct, in input order
  std::vector<GlobalName> globals_seen; // every distinct global named by the stream, allowed or not
  uint64_t end_offset = 0;              // offset just past STOP
  uint64_t opcode_count = 0;
  int protocol = 0;                     // from PROTO, or 0/1 when absent
};

Result<PickleParse> parse_pickle(const ByteSource& source, const Policy& policy,
                                 const PickleParseOptions& options);

// True for a global the built-in allowlist accepts (PyTorch's weights_only set plus numpy array
// reconstruction), whatever the policy adds.
bool is_builtin_allowed(const GlobalName& name);

}  // namespace zoogate::cdr
