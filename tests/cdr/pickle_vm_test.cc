// Tests of the non-executing pickle VM: hand-assembled opcode streams for every opcode, error path,
// limit and allowlist entry, and real pickles made by Debian's Python (torch 1.13, numpy 1.24).
#include "cdr/pickle_vm.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "cdr/pickle_keys.h"
#include "cdr/pickle_machine.h"
#include "common/encoding.h"
#include "tests/cdr/python_runner.h"

namespace zoogate::cdr {
namespace {

// ---------------------------------------------------------------------------------------------
// Assembling pickles

class P {
 public:
  P& op(Op code) { return byte(static_cast<uint8_t>(code)); }
  P& byte(uint8_t value) {
    out_.push_back(value);
    return *this;
  }
  P& le(uint64_t value, int width) {
    for (int i = 0; i < width; ++i) byte(static_cast<uint8_t>(value >> (8 * i)));
    return *this;
  }
  P& raw(std::string_view text) {
    out_.insert(out_.end(), text.begin(), text.end());
    return *this;
  }
  P& proto(uint8_t version) { return op(Op::kProto).byte(version); }
  P& mark() { return op(Op::kMark); }
  P& stop() { return op(Op::kStop); }
  P& none() { return op(Op::kNone); }
  P& boolean(bool value) { return op(value ? Op::kNewTrue : Op::kNewFalse); }
  // The smallest integer opcode, as CPython's pickler picks it.
  P& i(int64_t value) {
    if (value >= 0 && value < 256) return op(Op::kBinInt1).le(static_cast<uint64_t>(value), 1);
    if (value >= 0 && value < 65536) return op(Op::kBinInt2).le(static_cast<uint64_t>(value), 2);
    if (value >= INT32_MIN && value <= INT32_MAX) return op(Op::kBinInt).le(static_cast<uint64_t>(value), 4);
    return op(Op::kLong1).byte(8).le(static_cast<uint64_t>(value), 8);
  }
  P& s(std::string_view text) { return op(Op::kBinUnicode).le(text.size(), 4).raw(text); }
  P& b(std::string_view data) { return op(Op::kBinBytes).le(data.size(), 4).raw(data); }
  P& g(std::string_view module, std::string_view name) {
    return op(Op::kGlobal).raw(module).raw("\n").raw(name).raw("\n");
  }
  P& ints(const std::vector<int64_t>& values) {
    mark();
    for (int64_t value : values) i(value);
    return op(Op::kTuple);
  }
  P& ordered_dict() { return g("collections", "OrderedDict").op(Op::kEmptyTuple).op(Op::kReduce); }
  // ('storage', torch.<type>, key, 'cpu', numel) BINPERSID
  P& storage(std::string_view key, int64_t numel, std::string_view type = "FloatStorage") {
    return mark().s("storage").g("torch", type).s(key).s("cpu").i(numel).op(Op::kTuple).op(Op::kBinPersId);
  }
  // _rebuild_tensor_v2(storage, offset, sizes, strides, False, OrderedDict())
  P& tensor(std::string_view key, int64_t numel, int64_t offset, const std::vector<int64_t>& sizes,
            const std::vector<int64_t>& strides) {
    g("torch._utils", "_rebuild_tensor_v2").mark().storage(key, numel).i(offset).ints(sizes).ints(strides);
    return boolean(false).ordered_dict().op(Op::kTuple).op(Op::kReduce);
  }
  // numpy.dtype(typestr, False, True) BUILD (3, byteorder, None, None, None, -1, -1, 0)
  P& dtype(std::string_view typestr, std::string_view byteorder) {
    g("numpy", "dtype").s(typestr).boolean(false).boolean(true).op(Op::kTuple3).op(Op::kReduce);
    return mark().i(3).s(byteorder).none().none().none().i(-1).i(-1).i(0).op(Op::kTuple).op(Op::kBuild);
  }
  std::vector<uint8_t> bytes() const { return out_; }
  size_t size() const { return out_.size(); }

 private:
  std::vector<uint8_t> out_;
};

// A string literal with every byte, embedded NULs included.
template <size_t N>
std::vector<uint8_t> bytes_of(const char (&text)[N]) {
  return std::vector<uint8_t>(text, text + N - 1);
}

Result<PickleParse> parse(const std::vector<uint8_t>& data, const Policy& policy = {},
                          const PickleParseOptions& options = {}) {
  MemorySource source(data);
  return parse_pickle(source, policy, options);
}
Result<PickleParse> parse(const P& pickle, const Policy& policy = {}, const PickleParseOptions& options = {}) {
  return parse(pickle.bytes(), policy, options);
}

PickleParseOptions archive_options() {
  PickleParseOptions options;
  options.persistent_ids = PersistentIdMode::kTorchArchive;
  options.record_name = "archive/data.pkl";
  return options;
}

[[maybe_unused]] Policy with_actions(Action action) {
  Policy policy;
  policy.forbidden_global = policy.forbidden_call = policy.forbidden_build = policy.forbidden_persistent_id = action;
  return policy;
}

// ---------------------------------------------------------------------------------------------
// Rendering trees as text (the same form the Python sample script prints)

std::string escaped(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    auto byte = static_cast<uint8_t>(c);
    if (byte >= 0x20 && byte < 0x7F && c != '\'' && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 0xF]);
    }
  }
  return out;
}

// Decimal text of an IntValue (big ints by repeated division of their magnitude).
std::string decimal(const IntValue& value) {
  if (value.big.empty()) return std::to_string(value.small);
  std::vector<uint8_t> magnitude(value.big.begin(), value.big.end());
  bool negative = magnitude.back() & 0x80;
  if (negative) {
    bool carry = true;
    for (auto& byte : magnitude) {
      byte = static_cast<uint8_t>(~byte);
      if (carry) carry = ++byte == 0;
    }
  }
  std::string digits;
  while (std::any_of(magnitude.begin(), magnitude.end(), [](uint8_t b) { return b != 0; })) {
    unsigned remainder = 0;
    for (size_t i = magnitude.size(); i-- > 0;) {
      unsigned current = remainder * 256 + magnitude[i];
      magnitude[i] = static_cast<uint8_t>(current / 10);
      remainder = current % 10;
    }
    digits.push_back(static_cast<char>('0' + remainder));
  }
  if (negative) digits.push_back('-');
  return std::string(digits.rbegin(), digits.rend());
}

template <typename Items>
std::string joined(const Items& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::string ints_text(const auto& values) {
  std::vector<std::string> parts;
  for (auto value : values) parts.push_back(std::to_string(value));
  return "(" + joined(parts) + ")";
}

class Renderer {
 public:
  explicit Renderer(const ValueTree& tree) : tree_(tree) {}

  std::string node(NodeId id) {
    if (id >= tree_.nodes.size()) return "<bad id>";
    if (!open_.insert(id).second) return "<cycle>";
    std::string text = std::visit([&](const auto& value) { return render(value); }, tree_.nodes[id]);
    open_.erase(id);
    return text;
  }

 private:
  std::string pairs(const std::vector<std::pair<NodeId, NodeId>>& items) {
    std::vector<std::string> parts;
    for (const auto& [key, value] : items) parts.push_back(node(key) + ": " + node(value));
    return joined(parts);
  }
  std::string items(const std::vector<NodeId>& ids, bool sorted = false) {
    std::vector<std::string> parts;
    for (NodeId id : ids) parts.push_back(node(id));
    if (sorted) std::sort(parts.begin(), parts.end());
    return joined(parts);
  }
  std::string render(const NoneValue&) { return "None"; }
  std::string render(bool value) { return value ? "True" : "False"; }
  std::string render(const IntValue& value) { return decimal(value); }
  std::string render(const FloatValue& value) {
    uint64_t bits = 0;
    std::memcpy(&bits, &value.value, sizeof bits);
    char text[32];
    std::snprintf(text, sizeof text, "float(%016llx)", static_cast<unsigned long long>(bits));
    return text;
  }
  std::string render(const StrValue& value) { return "'" + escaped(value.utf8) + "'"; }
  std::string render(const BytesValue& value) {
    return value.is_bytearray ? "bytearray(b'" + escaped(value.data) + "')" : "b'" + escaped(value.data) + "'";
  }
  std::string render(const TupleValue& value) { return "(" + items(value.items) + ")"; }
  std::string render(const ListValue& value) { return "[" + items(value.items) + "]"; }
  std::string render(const SetValue& value) {
    return std::string(value.frozen ? "frozenset" : "set") + "{" + items(value.items, true) + "}";
  }
  std::string render(const DictValue& value) { return "{" + pairs(value.items) + "}"; }
  std::string render(const OrderedDictValue& value) {
    std::string text = "OrderedDict{" + pairs(value.items) + "}";
    if (value.attributes) text += "@" + node(*value.attributes);
    return text;
  }
  std::string render(const StorageRefValue& value) {
    return std::string("Storage(") + storage_type_name(value.type) + ", '" + value.location + "', " +
           std::to_string(value.numel) + ")";
  }
  std::string render(const TensorValue& value) {
    return "Tensor(" + node(value.storage) + ", " + std::to_string(value.storage_offset) + ", " +
           ints_text(value.sizes) + ", " + ints_text(value.strides) + ", " + render(value.requires_grad) + ")";
  }
  std::string render(const ParameterValue& value) {
    return "Parameter(" + node(value.tensor) + ", " + render(value.requires_grad) + ")";
  }
  std::string render(const GlobalValue& value) { return value.module + "." + value.name; }
  std::string render(const TorchSizeValue& value) { return "Size" + ints_text(value.dims); }
  std::string render(const NumpyDtypeValue& value) { return "dtype('" + value.descr + "')"; }
  std::string render(const NumpyArrayValue& value) {
    return "ndarray(" + node(value.dtype) + ", " + ints_text(value.shape) + ", " + (value.fortran_order ? "F" : "C") +
           ", " + to_hex(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data.data()), value.data.size())) +
           ")";
  }
  std::string render(const NumpyScalarValue& value) {
    return "scalar(" + node(value.dtype) + ", " +
           to_hex(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data.data()), value.data.size())) +
           ")";
  }
  std::string render(const NamespaceValue& value) { return "Namespace{" + pairs(value.attributes) + "}"; }
  std::string render(const OperatorCallValue& value) {
    std::string text = "call(" + node(value.callable) + ", " + node(value.args) + (value.is_newobj ? ", new" : "");
    if (value.build_state) text += ", state=" + node(*value.build_state);
    return text + ")";
  }

  const ValueTree& tree_;
  std::set<NodeId> open_;
};

std::string render(const PickleParse& parse) { return Renderer(parse.tree).node(parse.tree.root); }

// The root rendered, or the error described.
std::string outcome(const Result<PickleParse>& result) {
  if (!result) return "error: " + result.error().describe();
  return render(*result);
}

std::string outcome(const P& pickle, const Policy& policy = {}, const PickleParseOptions& options = {}) {
  return outcome(parse(pickle, policy, options));
}

template <size_t N>
std::string outcome(const char (&text)[N], const Policy& policy = {}, const PickleParseOptions& options = {}) {
  return outcome(parse(bytes_of(text), policy, options));
}

// Asserts a failure with `code` at `offset` whose message mentions `needle`.
void expect_error(const Result<PickleParse>& result, ErrorCode code, std::optional<uint64_t> offset,
                  std::string_view needle) {
  ASSERT_FALSE(result) << render(*result);
  EXPECT_EQ(result.error().code, code) << result.error().describe();
  if (offset) {
    EXPECT_EQ(result.error().offset, offset) << result.error().describe();
  }
  EXPECT_NE(result.error().message.find(needle), std::string::npos) << result.error().describe();
}

// ---------------------------------------------------------------------------------------------
// Every opcode

TEST(PickleVmOpcodes, Scalars) {
  EXPECT_EQ(outcome("N."), "None");
  EXPECT_EQ(outcome("\x88."), "True");
  EXPECT_EQ(outcome("\x89."), "False");
  EXPECT_EQ(outcome("I01\n."), "True");
  EXPECT_EQ(outcome("I00\n."), "False");
  EXPECT_EQ(outcome("I-42\n."), "-42");
  EXPECT_EQ(outcome("I0\n."), "0");
  EXPECT_EQ(outcome("I123456789012345678901234567890\n."), "123456789012345678901234567890");
  EXPECT_EQ(outcome("L-123456789012345678901234567890L\n."), "-123456789012345678901234567890");
  EXPECT_EQ(outcome("L9223372036854775807L\n."), "9223372036854775807");
  EXPECT_EQ(outcome("L-9223372036854775808\n."), "-9223372036854775808");
  EXPECT_EQ(outcome("L9223372036854775808\n."), "9223372036854775808");
  EXPECT_EQ(outcome(P().op(Op::kBinInt).le(0xFFFFFFFF, 4).stop()), "-1");
  EXPECT_EQ(outcome("K\xff."), "255");
  EXPECT_EQ(outcome("M\xff\xff."), "65535");
  EXPECT_EQ(outcome("\x8a\x00."), "0");
  EXPECT_EQ(outcome("\x8a\x01\xff."), "-1");
  EXPECT_EQ(outcome("\x8a\x02\xff\x00."), "255");
  EXPECT_EQ(outcome(P().op(Op::kLong1).byte(9).le(0, 8).byte(1).stop()), "18446744073709551616");
  EXPECT_EQ(outcome(P().op(Op::kLong4).le(9, 4).le(0, 8).byte(0xFF).stop()), "-18446744073709551616");
  EXPECT_EQ(outcome("F1.5\n."), "float(3ff8000000000000)");
  EXPECT_EQ(outcome("F-inf\n."), "float(fff0000000000000)");
  EXPECT_EQ(outcome("G\x3f\xf8\x00\x00\x00\x00\x00\x00."), "float(3ff8000000000000)");
}

TEST(PickleVmOpcodes, StringsAndBytes) {
  EXPECT_EQ(outcome("S'a\\n\\x41\\101\\'b'\n."), "'a\\x0a" "AA\\x27" "b'");
  EXPECT_EQ(outcome("S\"q\"\n."), "'q'");
  EXPECT_EQ(outcome(P().op(Op::kBinString).le(2, 4).raw("ab").stop()), "'ab'");
  EXPECT_EQ(outcome("U\x02\xc3\xa9."), "'\\xc3\\xa9'");  // UTF-8 Python 2 text stays text
  EXPECT_EQ(outcome("U\x01\xff."), "b'\\xff'");           // anything else is bytes
  EXPECT_EQ(outcome("Vx\\u20ac\\\\u0041\n."), "'x\\xe2\\x82\\xac\\x5c\\x5cu0041'");
  EXPECT_EQ(outcome("V\\ud800\n."), "'\\xed\\xa0\\x80'");  // lone surrogate, surrogatepass
  EXPECT_EQ(outcome(P().s("abc").stop()), "'abc'");
  EXPECT_EQ(outcome("\x8c\x01z."), "'z'");
  EXPECT_EQ(outcome(P().op(Op::kBinUnicode8).le(1, 8).raw("y").stop()), "'y'");
  EXPECT_EQ(outcome(P().b("\x01\x02").stop()), "b'\\x01\\x02'");
  EXPECT_EQ(outcome("C\x01x."), "b'x'");
  EXPECT_EQ(outcome(P().op(Op::kBinBytes8).le(1, 8).raw("w").stop()), "b'w'");
  EXPECT_EQ(outcome(P().op(Op::kByteArray8).le(2, 8).raw("hi").stop()), "bytearray(b'hi')");
  EXPECT_EQ(outcome(P().op(Op::kByteArray8).le(2, 8).raw("hi").op(Op::kReadOnlyBuffer).stop()), "b'hi'");
  EXPECT_EQ(outcome("C\x01x\x98."), "b'x'");
}

TEST(PickleVmOpcodes, Containers) {
  EXPECT_EQ(outcome(")."), "()");
  EXPECT_EQ(outcome("(K\x01K\x02t."), "(1, 2)");
  EXPECT_EQ(outcome("(t."), "()");
  EXPECT_EQ(outcome("K\x01\x85."), "(1)");
  EXPECT_EQ(outcome("K\x01K\x02\x86."), "(1, 2)");
  EXPECT_EQ(outcome("K\x01K\x02K\x03\x87."), "(1, 2, 3)");
  EXPECT_EQ(outcome("]."), "[]");
  EXPECT_EQ(outcome("(K\x01K\x02l."), "[1, 2]");
  EXPECT_EQ(outcome("]K\x01" "a."), "[1]");
  EXPECT_EQ(outcome("](K\x01K\x02" "e."), "[1, 2]");
  EXPECT_EQ(outcome("}."), "{}");
  EXPECT_EQ(outcome("(K\x01K\x02" "d."), "{1: 2}");
  EXPECT_EQ(outcome("}K\x01K\x02s."), "{1: 2}");
  EXPECT_EQ(outcome("}(K\x01K\x02K\x03K\x04u."), "{1: 2, 3: 4}");
  EXPECT_EQ(outcome("\x8f."), "set{}");
  EXPECT_EQ(outcome("\x8f(K\x02K\x01K\x02\x90."), "set{1, 2}");
  EXPECT_EQ(outcome("(K\x01K\x01\x91."), "frozenset{1}");
}

TEST(PickleVmOpcodes, StackAndMark) {
  EXPECT_EQ(outcome("K\x01K\x02" "0."), "1");                // POP
  EXPECT_EQ(outcome("K\x01(K\x02K\x03" "1."), "1");          // POP_MARK
  EXPECT_EQ(outcome("K\x01(0."), "1");                    // POP on an empty mark frame drops the MARK
  auto dup = parse(bytes_of("]2\x86."));                  // DUP keeps identity
  ASSERT_TRUE(dup) << dup.error().describe();
  const auto& pair = std::get<TupleValue>(dup->tree.at(dup->tree.root)).items;
  EXPECT_EQ(pair[0], pair[1]);
}

TEST(PickleVmOpcodes, MemoOpcodesShareNodes) {
  EXPECT_EQ(outcome("K\x07p3\n0g3\n."), "7");
  EXPECT_EQ(outcome("K\x07q\x03" "0h\x03."), "7");
  EXPECT_EQ(outcome("K\x07r\x00\x01\x00\x00" "0j\x00\x01\x00\x00."), "7");
  // MEMOIZE uses the number of memo entries, not the highest index.
  EXPECT_EQ(outcome("K\x07q\x05K\x08\x94h\x01."), "8");
  auto shared = parse(bytes_of("]\x94h\x00h\x00\x86."));
  ASSERT_TRUE(shared);
  const auto& items = std::get<TupleValue>(shared->tree.at(shared->tree.root)).items;
  EXPECT_EQ(items[0], items[1]);
  EXPECT_TRUE(std::holds_alternative<ListValue>(shared->tree.at(items[0])));
}

TEST(PickleVmOpcodes, CyclesThroughTheMemo) {
  // l = []; l.append(l)
  auto cyclic = parse(bytes_of("]q\x00h\x00" "a."));
  ASSERT_TRUE(cyclic) << cyclic.error().describe();
  const auto& list = std::get<ListValue>(cyclic->tree.at(cyclic->tree.root));
  ASSERT_EQ(list.items.size(), 1u);
  EXPECT_EQ(list.items[0], cyclic->tree.root);
  // d = {}; d['self'] = [d]
  auto through_dict = parse(P().op(Op::kEmptyDict).op(Op::kBinPut).byte(0).s("self").mark().op(Op::kBinGet).byte(0)
                                .op(Op::kList).op(Op::kSetItem).stop());
  ASSERT_TRUE(through_dict) << through_dict.error().describe();
  EXPECT_EQ(render(*through_dict), "{'self': [<cycle>]}");
}

TEST(PickleVmOpcodes, ProtoAndFrame) {
  auto framed = parse(P().proto(4).op(Op::kFrame).le(2, 8).raw("K\x05").stop());
  ASSERT_TRUE(framed) << framed.error().describe();
  EXPECT_EQ(render(*framed), "5");
  EXPECT_EQ(framed->protocol, 4);
  // Two frames back to back, the second one empty, then an unframed STOP.
  EXPECT_EQ(outcome(P().proto(5).op(Op::kFrame).le(9, 8).op(Op::kFrame).le(0, 8).raw("N").stop()), "None");
  auto no_proto = parse(bytes_of("(K\x01t."));
  ASSERT_TRUE(no_proto);
  EXPECT_EQ(no_proto->protocol, 1);
  auto text_only = parse(bytes_of("(I1\nt."));
  ASSERT_TRUE(text_only);
  EXPECT_EQ(text_only->protocol, 0);
  EXPECT_EQ(text_only->opcode_count, 4u);
  EXPECT_EQ(text_only->end_offset, 6u);
}

TEST(PickleVmOpcodes, GlobalsInstObjAndNewObjEx) {
  EXPECT_EQ(outcome("ctorch\nfloat16\n."), "torch.float16");
  EXPECT_EQ(outcome(P().proto(4).s("torch").s("bfloat16").op(Op::kStackGlobal).stop()), "torch.bfloat16");
  // STACK_GLOBAL operands may come from the memo.
  EXPECT_EQ(outcome(P().proto(4).s("torch").op(Op::kMemoize).s("Size").op(Op::kStackGlobal).op(Op::kPop)
                        .op(Op::kBinGet).byte(0).s("Tensor").op(Op::kStackGlobal).stop()),
            "torch.Tensor");
  EXPECT_EQ(outcome("(icollections\nOrderedDict\n."), "OrderedDict{}");
  EXPECT_EQ(outcome("(ccollections\nOrderedDict\no."), "OrderedDict{}");
  EXPECT_EQ(outcome(P().proto(4).g("argparse", "Namespace").op(Op::kEmptyTuple).op(Op::kEmptyDict)
                        .op(Op::kNewObjEx).stop()),
            "Namespace{}");
  EXPECT_EQ(outcome(P().proto(2).g("argparse", "Namespace").op(Op::kEmptyTuple).op(Op::kNewObj).stop()),
            "Namespace{}");
}

TEST(PickleVmOpcodes, PersistentIds) {
  auto storage = parse(P().proto(2).storage("0", 6).stop(), {}, archive_options());
  ASSERT_TRUE(storage) << storage.error().describe();
  EXPECT_EQ(render(*storage), "Storage(FloatStorage, 'cpu', 6)");
  EXPECT_EQ(std::get<StorageRefValue>(storage->tree.at(storage->tree.root)).key, "0");
  // PERSID (text) is never a storage reference; forbidden_persistent_id blocks by default.
  expect_error(parse(bytes_of("Pfoo\n."), {}, archive_options()), ErrorCode::kForbidden, 0,
               "forbidden_persistent_id: PERSID");
}

// ---------------------------------------------------------------------------------------------
// Malformed input

TEST(PickleVmErrors, TruncationNamesTheOpcodeAndItsOffset) {
  expect_error(parse(bytes_of("\x80\x02K\x01X\x05\x00\x00\x00" "ab")), ErrorCode::kParse, 4,
               "BINUNICODE: truncated operand");
  expect_error(parse(bytes_of("\x80\x02J\x01\x02")), ErrorCode::kParse, 2, "BININT: truncated");
  expect_error(parse(bytes_of("\x80\x02G\x01")), ErrorCode::kParse, 2, "BINFLOAT");
  expect_error(parse(bytes_of("\x80")), ErrorCode::kParse, 0, "PROTO");
  expect_error(parse(bytes_of("cos\nsys")), ErrorCode::kParse, 0, "GLOBAL: text line is not terminated");
  expect_error(parse(P().op(Op::kBinBytes8).le(100, 8).raw("abc")), ErrorCode::kParse, 0, "BINBYTES8");
}

TEST(PickleVmErrors, MissingStopAndTrailingBytes) {
  expect_error(parse(bytes_of("K\x01")), ErrorCode::kParse, 2, "without STOP");
  expect_error(parse(std::vector<uint8_t>{}), ErrorCode::kParse, 0, "without STOP");
  expect_error(parse(bytes_of("K\x01.junk")), ErrorCode::kParse, 2, "4 bytes after STOP");
  PickleParseOptions stacked;
  stacked.allow_trailing_bytes = true;
  auto first = parse(bytes_of("K\x01.K\x02."), {}, stacked);
  ASSERT_TRUE(first) << first.error().describe();
  EXPECT_EQ(render(*first), "1");
  EXPECT_EQ(first->end_offset, 3u);
}

TEST(PickleVmErrors, FrameBoundaries) {
  // BININT1's operand lies beyond the frame's end.
  expect_error(parse(P().proto(4).op(Op::kFrame).le(1, 8).raw("K\x05").stop()), ErrorCode::kParse, 11,
               "BININT1: operand runs past the end of the FRAME at offset 12");
  // A text line that crosses the frame's end.
  expect_error(parse(P().proto(4).op(Op::kFrame).le(3, 8).raw("I12\n").stop()), ErrorCode::kParse, 11,
               "INT: text line runs past the end of the FRAME");
  // A new frame before the current one is used up.
  expect_error(parse(P().proto(4).op(Op::kFrame).le(11, 8).op(Op::kFrame).le(1, 8).raw("NN").stop()),
               ErrorCode::kParse, 11, "FRAME: a new FRAME starts before the current one ends");
  // A frame longer than the input.
  expect_error(parse(P().proto(4).op(Op::kFrame).le(100, 8).raw("N.")), ErrorCode::kParse, 2, "runs past the end");
  // A frame that ends inside a multi-byte operand of the next frame's first opcode is also refused
  // when the input simply ends there.
  expect_error(parse(P().proto(4).op(Op::kFrame).le(2, 8).raw("K\x05").raw("J\x01")), ErrorCode::kParse, 13,
               "BININT: truncated");
}

TEST(PickleVmErrors, ExtensionsAndOutOfBandBuffersAreUnsupported) {
  expect_error(parse(bytes_of("\x80\x02\x82\x01.")), ErrorCode::kUnsupported, 2, "EXT1");
  expect_error(parse(bytes_of("\x80\x02\x83\x01\x00.")), ErrorCode::kUnsupported, 2, "EXT2");
  expect_error(parse(bytes_of("\x80\x02\x84\x01\x00\x00\x00.")), ErrorCode::kUnsupported, 2, "EXT4");
  expect_error(parse(bytes_of("\x80\x05\x97\x98.")), ErrorCode::kUnsupported, 2, "NEXT_BUFFER: out-of-band");
}

TEST(PickleVmErrors, MalformedOperandsAndStack) {
  expect_error(parse(bytes_of("\xff.")), ErrorCode::kParse, 0, "opcode 0xff: unknown opcode");
  expect_error(parse(bytes_of("\x80\x06N.")), ErrorCode::kParse, 0, "unsupported protocol 6");
  expect_error(parse(bytes_of("0.")), ErrorCode::kParse, 0, "POP: stack underflow");
  expect_error(parse(bytes_of("K\x01\x86.")), ErrorCode::kParse, 2, "TUPLE2: stack underflow");
  expect_error(parse(bytes_of("(K\x01\x86.")), ErrorCode::kParse, 3, "TUPLE2: stack underflow");  // not across MARK
  expect_error(parse(bytes_of("K\x01t.")), ErrorCode::kParse, 2, "TUPLE: no MARK");
  expect_error(parse(bytes_of("1.")), ErrorCode::kParse, 0, "POP_MARK: no MARK");
  expect_error(parse(bytes_of("h\x03.")), ErrorCode::kParse, 0, "BINGET: memo has no entry 3");
  expect_error(parse(bytes_of("q\x00.")), ErrorCode::kParse, 0, "nothing to memoize");
  expect_error(parse(bytes_of("(K\x01" "d.")), ErrorCode::kParse, 3, "DICT: odd number");
  expect_error(parse(bytes_of("}(K\x01u.")), ErrorCode::kParse, 4, "SETITEMS: odd number");
  expect_error(parse(bytes_of("(K\x01" "e.")), ErrorCode::kParse, 3, "APPENDS: stack underflow");
  expect_error(parse(P().op(Op::kBinString).le(0xFFFFFFFF, 4).stop()), ErrorCode::kParse, 0, "negative length");
  expect_error(parse(P().op(Op::kLong4).le(0x80000000, 4).stop()), ErrorCode::kParse, 0, "negative length");
  expect_error(parse(bytes_of("X\x02\x00\x00\x00\xc0\x80.")), ErrorCode::kParse, 0, "not valid UTF-8");
  expect_error(parse(bytes_of("Sabc\n.")), ErrorCode::kParse, 0, "STRING: operand must be quoted");
  expect_error(parse(bytes_of("S'\\x4'\n.")), ErrorCode::kParse, 0, "invalid \\x escape");
  expect_error(parse(bytes_of("V\\u12\n.")), ErrorCode::kParse, 0, "truncated \\u");
  expect_error(parse(bytes_of("V\\U00110000\n.")), ErrorCode::kParse, 0, "beyond U+10FFFF");
  expect_error(parse(bytes_of("I0x10\n.")), ErrorCode::kParse, 0, "INT: integer text is not plain decimal");
  expect_error(parse(bytes_of("I010\n.")), ErrorCode::kParse, 0, "leading zeros");
  expect_error(parse(bytes_of("I 1\n.")), ErrorCode::kParse, 0, "not plain decimal");
  expect_error(parse(bytes_of("F1.5x\n.")), ErrorCode::kParse, 0, "FLOAT: operand is not a float");
  expect_error(parse(bytes_of("g-1\n.")), ErrorCode::kParse, 0, "GET: memo index is not a decimal number");
  expect_error(parse(P().proto(4).i(1).i(2).op(Op::kStackGlobal).stop()), ErrorCode::kParse, 6,
               "STACK_GLOBAL: operands must be two str");
  expect_error(parse(bytes_of("c\xff\nx\n.")), ErrorCode::kParse, 0, "GLOBAL: name is not valid UTF-8");
  expect_error(parse(bytes_of("K\x01\x98.")), ErrorCode::kParse, 2, "READONLY_BUFFER");
  expect_error(parse(bytes_of("(o.")), ErrorCode::kParse, 1, "OBJ: no class");
  expect_error(parse(bytes_of(".")), ErrorCode::kParse, 0, "STOP: stack underflow");
}

TEST(PickleVmErrors, RecordNamePrefixesErrors) {
  PickleParseOptions options;
  options.record_name = "archive/data.pkl";
  auto result = parse(bytes_of("K"), {}, options);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().message.rfind("archive/data.pkl: ", 0), 0u) << result.error().message;
  EXPECT_EQ(result.error().offset, 0u);
}

}  // namespace
}  // namespace zoogate::cdr
