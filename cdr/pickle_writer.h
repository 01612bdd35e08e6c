// The canonical pickle writer: a ValueTree in, brand-new protocol-2 pickle bytes out.
//
// Output uses only opcodes that PyTorch's weights_only unpickler accepts (PROTO, GLOBAL, REDUCE, NEWOBJ,
// BUILD, MARK, TUPLE/TUPLE1-3, EMPTY_TUPLE/LIST/DICT, APPEND(S), SETITEM(S), NONE, NEWTRUE/NEWFALSE,
// BININT/BININT1/BININT2, LONG1, BINUNICODE, BINPERSID, BINGET/LONG_BINGET, BINPUT/LONG_BINPUT, STOP),
// plus the forms CPython's own protocol-2 pickler uses where no such opcode exists: BINFLOAT for
// floats, LONG4 for integers of more than 255 bytes, `_codecs.encode(str, 'latin1')` for bytes,
// `builtins.bytearray(str, 'latin-1')` for bytearrays and `builtins.set/frozenset([items])` for sets.
// (PyTorch 1.13's weights_only loader rejects floats and bytes even in files it wrote itself.)
// Typed nodes come out the way torch.save, numpy and argparse pickle them, so their own loaders accept
// the result: see the table in pickle_writer.cc.
//
// Identity: a node reachable more than once is written once, stored in the memo, and fetched again for
// every later reference, so sharing (storages shared by tensor views included) survives. None, True,
// False and () are Python singletons and are simply written again. Lists, dicts, OrderedDicts and
// Namespaces are created empty and memoized before their contents, so reference cycles through them
// are written; a cycle that reaches a tuple, set, tensor or any other node that the unpickler can only
// create after its contents cannot be expressed and is a kUnsupported error.
//
// Deterministic: the same tree and options always give the same bytes. With `seed` 0 the memo holds
// only nodes that are referenced again and the writer's own repeated GLOBALs and strs (such as
// torch._utils._rebuild_tensor_v2 or 'storage', memoized at their second use), numbered 0, 1, 2... in
// the order they are stored. Another seed (MTD layout variation) draws memo indices from a seed-keyed
// permutation of a wider index range and adds memo entries that are never read at seed-chosen points;
// the loaded value is the same either way.
//
// The writer works from an explicit task stack (no recursion, so nesting depth costs heap, not call
// stack) and streams to the sink in chunks of at most 64 KiB; a str or integer operand of 64 KiB or
// more goes to the sink straight from the tree, without a copy.
//
// Errors: kInvalidArgument for a tree that breaks value.h's contracts (node ids out of range, a child
// of the wrong kind, a non-canonical integer or dtype string, invalid UTF-8, a newline in a global's
// name, a storage reference with PersistentIdStyle::kNone...), kUnsupported for what protocol 2
// cannot express (the cycles above, strings over 4 GiB), kLimitExceeded for trees of more than
// kMaxWritableNodes reachable nodes, and the sink's own errors. After an error the sink may hold a
// partial pickle: discard it.
//
// Thread safety: a pure function of its arguments; concurrent calls on different sinks are safe.
#pragma once

#include <cstdint>

#include "cdr/value.h"
#include "common/byte_sink.h"
#include "common/error.h"

namespace zoogate::cdr {

enum class PersistentIdStyle {
  kTorchArchive,  // StorageRefValue -> ('storage', torch.<T>Storage, key, location, numel) BINPERSID
  kNone,          // a StorageRefValue in the tree is an error
};

struct PickleWriteOptions {
  PersistentIdStyle persistent_ids = PersistentIdStyle::kTorchArchive;
  uint64_t seed = 0;  // 0: plain memo numbering; anything else: MTD layout variation keyed by it
};

// Bounds the memo indices the writer may need so that they always fit LONG_BINPUT's 32-bit operand.
inline constexpr uint64_t kMaxWritableNodes = uint64_t{1} << 28;

Status write_pickle(const ValueTree& tree, const PickleWriteOptions& options, ByteSink& sink);

}  // namespace zoogate::cdr
