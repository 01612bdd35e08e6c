// A non-executing pickle virtual machine.
//
// parse_pickle() reads one pickle stream (protocols 0 to 5, every opcode, with real stack, MARK, memo
// and FRAME semantics) and builds a typed ValueTree. It never imports or calls anything: every
// GLOBAL/STACK_GLOBAL/INST/OBJ is matched against exact (module, name) pairs (the built-in allowlist
// plus Policy::operator_allowed_globals; Python's protocol < 3 renames __builtin__ -> builtins and
// copy_reg -> copyreg apply first), and REDUCE/NEWOBJ/BUILD/SETITEM(S)/APPEND(S)/ADDITEMS are checked
// against what the matched entry declares (argument count and kinds, storage extents, dtypes).
//
// Forbidden constructs become Findings. With Action::kBlock parsing fails with a kForbidden Error
// that names the finding. With Action::kDisarm the construct is replaced by "poison", which spreads
// through whatever consumes it (tuple items, call arguments, BUILD state, persistent ids, the memo)
// and is dropped, with its whole subtree, where it would enter a list, dict (as key or value), set,
// OrderedDict or Namespace. A poisoned result, or a STOP with a MARK still open, is an unsafe root:
// always a kForbidden error. The returned tree keeps nothing of a disarmed subtree: every node the
// root cannot reach is cleared to None.
//
// Errors carry the offset of the failing opcode and name it: kParse for malformed input (truncation,
// an opcode or operand straddling a FRAME boundary, no STOP, bytes after STOP), kLimitExceeded for
// each Policy::limits entry (and for more than 10,000 findings in one stream, or dict keys that
// collide far beyond chance), kUnsupported for EXT1/2/4 and out-of-band buffers (NEXT_BUFFER).
// Errors are prefixed with PickleParseOptions::record_name when it is set.
//
// Value fidelity notes: memo GETs return the very same node (identity and cycles survive); None,
// True, False and () are shared singletons as in Python; dict keys compare by value (1 == 1.0 ==
// True, last write wins, the first key object stays); Python 2 strings (STRING, BINSTRING,
// SHORT_BINSTRING) become str when they are UTF-8 and bytes otherwise.
//
// Pure function over its inputs; safe to call from several threads on different sources. Values are
// copied into the tree: nothing refers back to the source after the call.
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
// In both torch modes, every reference to one storage key is the same StorageRefValue node (torch
// caches storages by key); a reference that disagrees on type, location or numel is a
// kForbiddenPersistentId finding, as is anything that is not such a tuple (PERSID's text ids too).

struct PickleParseOptions {
  PersistentIdMode persistent_ids = PersistentIdMode::kNone;
  std::string record_name;  // names the stream in findings and errors
  // The legacy format stacks several pickles in one file: when true, bytes after STOP are allowed and
  // PickleParse::end_offset says where the next part starts. Everywhere else trailing bytes are an error.
  bool allow_trailing_bytes = false;
};

struct PickleParse {
  ValueTree tree;
  std::vector<Finding> findings;         // every disarmed construct, in input order
  std::vector<GlobalName> globals_seen;  // every distinct global named by the stream (as written),
                                         // allowed or not, in first-seen order
  uint64_t end_offset = 0;               // offset just past STOP
  uint64_t opcode_count = 0;
  int protocol = 0;  // from PROTO, or 0/1 when absent
};

Result<PickleParse> parse_pickle(const ByteSource& source, const Policy& policy, const PickleParseOptions& options);

// True for a global the built-in allowlist accepts (PyTorch's weights_only set plus numpy array
// reconstruction and CPython's own helpers for bytes, bytearray, set and argparse.Namespace),
// whatever the policy adds. Names are matched as given: the Python 2 spellings (__builtin__.set)
// are accepted by the VM only inside protocol < 3 streams, so they are not listed here.
bool is_builtin_allowed(const GlobalName& name);

}  // namespace zoogate::cdr
