// The canonical pickle writer: a ValueTree in, brand-new protocol-2 pickle bytes out.
//
// Output uses only opcodes that PyTorch's weights_only unpickler accepts (PROTO, GLOBAL, REDUCE, NEWOBJ,
// BUILD, MARK, TUPLE/TUPLE1-3, EMPTY_TUPLE/LIST/DICT/SET, APPEND(S), SETITEM(S), NONE, NEWTRUE/NEWFALSE,
// BININT/BININT1/BININT2, LONG1, BINUNICODE, BINPERSID, BINGET/LONG_BINGET, BINPUT/LONG_BINPUT, STOP),
// plus BINFLOAT for Python floats and `_codecs.encode` for bytes, the forms CPython's own protocol-2
// pickler uses (PyTorch 1.13's weights_only loader rejects those two even in files it wrote itself).
//
// Deterministic: the same tree and options always give the same bytes. With `seed` 0 the memo is
// numbered 0, 1, 2... in first-use order; another seed renumbers it and adds harmless memo padding
// (MTD layout variation); the loaded value is the same either way.
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
  uint64_t seed = 0;
};

Status write_pickle(const ValueTree& tree, const PickleWriteOptions& options, ByteSink& sink);

}  // namespace zoogate::cdr
