// Tests of the non-executing pickle VM: hand-assembled opcode streams for every opcode, error path,
// limit and allowlist entry, and real pickles made by Debian's Python (torch 1.13, numpy 1.24).
#include "cdr/pickle_vm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <sstream>

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
  P& append(const P& other) {
    out_.insert(out_.end(), other.out_.begin(), other.out_.end());
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

// Every node of a parsed tree is reachable from the root or blanked to None: nothing the pickle
// discarded, and nothing of a disarmed construct, is left for a consumer that scans all nodes.
void expect_only_reachable_nodes(const ValueTree& tree) {
  std::vector<bool> reached(tree.nodes.size(), false);
  for (NodeId id : reachable_nodes(tree)) reached[id] = true;
  for (NodeId id = 0; id < tree.nodes.size(); ++id) {
    EXPECT_TRUE(reached[id] || std::holds_alternative<NoneValue>(tree.nodes[id])) << "node " << id << " is left over";
  }
}

Result<PickleParse> parse(const std::vector<uint8_t>& data, const Policy& policy = {},
                          const PickleParseOptions& options = {}) {
  MemorySource source(data);
  auto result = parse_pickle(source, policy, options);
  if (result) expect_only_reachable_nodes(result->tree);
  return result;
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

Policy with_actions(Action action) {
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
           ", " +
           to_hex(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data.data()), value.data.size())) +
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
  EXPECT_EQ(outcome("S'a\\n\\x41\\101\\'b'\n."),
            "'a\\x0a"
            "AA\\x27"
            "b'");
  EXPECT_EQ(outcome("S\"q\"\n."), "'q'");
  EXPECT_EQ(outcome(P().op(Op::kBinString).le(2, 4).raw("ab").stop()), "'ab'");
  EXPECT_EQ(outcome("U\x02\xc3\xa9."), "'\\xc3\\xa9'");  // UTF-8 Python 2 text stays text
  EXPECT_EQ(outcome("U\x01\xff."), "b'\\xff'");          // anything else is bytes
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
  EXPECT_EQ(outcome("]K\x01"
                    "a."),
            "[1]");
  EXPECT_EQ(outcome("](K\x01K\x02"
                    "e."),
            "[1, 2]");
  EXPECT_EQ(outcome("}."), "{}");
  EXPECT_EQ(outcome("(K\x01K\x02"
                    "d."),
            "{1: 2}");
  EXPECT_EQ(outcome("}K\x01K\x02s."), "{1: 2}");
  EXPECT_EQ(outcome("}(K\x01K\x02K\x03K\x04u."), "{1: 2, 3: 4}");
  EXPECT_EQ(outcome("\x8f."), "set{}");
  EXPECT_EQ(outcome("\x8f(K\x02K\x01K\x02\x90."), "set{1, 2}");
  EXPECT_EQ(outcome("(K\x01K\x01\x91."), "frozenset{1}");
}

TEST(PickleVmOpcodes, StackAndMark) {
  EXPECT_EQ(outcome("K\x01K\x02"
                    "0."),
            "1");  // POP
  EXPECT_EQ(outcome("K\x01(K\x02K\x03"
                    "1."),
            "1");                         // POP_MARK
  EXPECT_EQ(outcome("K\x01(0."), "1");    // POP on an empty mark frame drops the MARK
  auto dup = parse(bytes_of("]2\x86."));  // DUP keeps identity
  ASSERT_TRUE(dup) << dup.error().describe();
  const auto& pair = std::get<TupleValue>(dup->tree.at(dup->tree.root)).items;
  EXPECT_EQ(pair[0], pair[1]);
}

TEST(PickleVmOpcodes, MemoOpcodesShareNodes) {
  EXPECT_EQ(outcome("K\x07p3\n0g3\n."), "7");
  EXPECT_EQ(outcome("K\x07q\x03"
                    "0h\x03."),
            "7");
  EXPECT_EQ(outcome("K\x07r\x00\x01\x00\x00"
                    "0j\x00\x01\x00\x00."),
            "7");
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
  auto cyclic =
      parse(bytes_of("]q\x00h\x00"
                     "a."));
  ASSERT_TRUE(cyclic) << cyclic.error().describe();
  const auto& list = std::get<ListValue>(cyclic->tree.at(cyclic->tree.root));
  ASSERT_EQ(list.items.size(), 1u);
  EXPECT_EQ(list.items[0], cyclic->tree.root);
  // d = {}; d['self'] = [d]
  auto through_dict = parse(P().op(Op::kEmptyDict)
                                .op(Op::kBinPut)
                                .byte(0)
                                .s("self")
                                .mark()
                                .op(Op::kBinGet)
                                .byte(0)
                                .op(Op::kList)
                                .op(Op::kSetItem)
                                .stop());
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
  EXPECT_EQ(outcome(P().proto(4)
                        .s("torch")
                        .op(Op::kMemoize)
                        .s("Size")
                        .op(Op::kStackGlobal)
                        .op(Op::kPop)
                        .op(Op::kBinGet)
                        .byte(0)
                        .s("Tensor")
                        .op(Op::kStackGlobal)
                        .stop()),
            "torch.Tensor");
  EXPECT_EQ(outcome("(icollections\nOrderedDict\n."), "OrderedDict{}");
  EXPECT_EQ(outcome("(ccollections\nOrderedDict\no."), "OrderedDict{}");
  EXPECT_EQ(
      outcome(P().proto(4).g("argparse", "Namespace").op(Op::kEmptyTuple).op(Op::kEmptyDict).op(Op::kNewObjEx).stop()),
      "Namespace{}");
  EXPECT_EQ(outcome(P().proto(2).g("argparse", "Namespace").op(Op::kEmptyTuple).op(Op::kNewObj).stop()), "Namespace{}");
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

TEST(PickleVmOpcodes, BufferedSourcesReadLikeMemory) {
  // Operands and text lines longer than the reader's window, and many small opcodes across its
  // refills, read through a source that is not a MemorySource (SubSource: the buffered path).
  std::string long_text(150'000, 'x');
  std::string long_line(200'000, 'y');
  P framed;
  for (int i = 0; i < 20'000; ++i) framed.i(i % 300);
  P pickle;
  pickle.proto(4).mark().op(Op::kFrame).le(framed.size(), 8).append(framed);
  pickle.s(long_text)
      .op(Op::kUnicode)
      .raw(long_line + "\n")
      .op(Op::kBinBytes8)
      .le(100'000, 8)
      .raw(std::string(100'000, 'z'));
  pickle.raw("I123456789\n").op(Op::kList).stop();
  std::vector<uint8_t> bytes = pickle.bytes();
  MemorySource memory(bytes);
  SubSource buffered(memory, 0, memory.size());
  auto direct = parse_pickle(memory, Policy{}, {});
  auto windowed = parse_pickle(buffered, Policy{}, {});
  ASSERT_TRUE(direct) << direct.error().describe();
  ASSERT_TRUE(windowed) << windowed.error().describe();
  EXPECT_TRUE(structurally_equal(direct->tree, windowed->tree));
  const auto& items = std::get<ListValue>(windowed->tree.at(windowed->tree.root)).items;
  ASSERT_EQ(items.size(), 20'004u);
  EXPECT_EQ(std::get<StrValue>(windowed->tree.at(items[20'000])).utf8, long_text);
  EXPECT_EQ(std::get<StrValue>(windowed->tree.at(items[20'001])).utf8, long_line);
  EXPECT_EQ(std::get<BytesValue>(windowed->tree.at(items[20'002])).data.size(), 100'000u);
  EXPECT_EQ(render(*windowed).substr(0, 10), "[0, 1, 2, ");
  // The same errors, at the same offsets, either way.
  std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + 150'000);
  MemorySource cut_memory(cut);
  SubSource cut_buffered(cut_memory, 0, cut_memory.size());
  auto cut_direct = parse_pickle(cut_memory, Policy{}, {});
  auto cut_windowed = parse_pickle(cut_buffered, Policy{}, {});
  ASSERT_FALSE(cut_direct);
  ASSERT_FALSE(cut_windowed);
  EXPECT_EQ(cut_direct.error().describe(), cut_windowed.error().describe());
}

// ---------------------------------------------------------------------------------------------
// Malformed input

TEST(PickleVmErrors, TruncationNamesTheOpcodeAndItsOffset) {
  expect_error(parse(bytes_of("\x80\x02K\x01X\x05\x00\x00\x00"
                              "ab")),
               ErrorCode::kParse, 4, "BINUNICODE: truncated operand");
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
  expect_error(parse(P().proto(4).op(Op::kFrame).le(11, 8).op(Op::kFrame).le(1, 8).raw("NN").stop()), ErrorCode::kParse,
               11, "FRAME: a new FRAME starts before the current one ends");
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
  expect_error(parse(bytes_of("(K\x01"
                              "d.")),
               ErrorCode::kParse, 3, "DICT: odd number");
  expect_error(parse(bytes_of("}(K\x01u.")), ErrorCode::kParse, 4, "SETITEMS: odd number");
  expect_error(parse(bytes_of("(K\x01"
                              "e.")),
               ErrorCode::kParse, 3, "APPENDS: stack underflow");
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

// ---------------------------------------------------------------------------------------------
// Limits: each one is enforced

Policy with_limits(const std::function<void(Limits&)>& change) {
  Policy policy;
  change(policy.limits);
  return policy;
}

TEST(PickleVmLimits, MaxPickleSize) {
  expect_error(parse(bytes_of("K\x01."), with_limits([](Limits& l) { l.max_pickle_size = 2; })),
               ErrorCode::kLimitExceeded, 0, "exceeds max_pickle_size (2)");
}

TEST(PickleVmLimits, MaxOpcodes) {
  auto policy = with_limits([](Limits& l) { l.max_opcodes = 3; });
  EXPECT_EQ(outcome("N0N0N.", with_limits([](Limits& l) { l.max_opcodes = 6; })), "None");
  expect_error(parse(bytes_of("N0N0N."), policy), ErrorCode::kLimitExceeded, 3, "max_opcodes");
}

TEST(PickleVmLimits, MaxStackDepthCountsEveryMarkLevel) {
  auto policy = with_limits([](Limits& l) { l.max_stack_depth = 3; });
  EXPECT_EQ(outcome("N(N(Ntt.", policy), "(None, (None))");
  expect_error(parse(bytes_of("N(N(NNtt."), policy), ErrorCode::kLimitExceeded, 5, "max_stack_depth");
}

TEST(PickleVmLimits, MaxNestingDepthCountsMarks) {
  auto policy = with_limits([](Limits& l) { l.max_nesting_depth = 3; });
  EXPECT_EQ(outcome("(((ttt.", policy), "((()))");
  expect_error(parse(bytes_of("((((tttt."), policy), ErrorCode::kLimitExceeded, 3, "MARK: 4 exceeds max_nesting_depth");
}

TEST(PickleVmLimits, MaxNestingDepthCountsContainerDepth) {
  // 100k nested TUPLE1 with the default limit.
  std::string nested = "N" + std::string(100'000, '\x85') + ".";
  auto deep = parse(std::vector<uint8_t>(nested.begin(), nested.end()));
  expect_error(deep, ErrorCode::kLimitExceeded, 1001, "TUPLE1: 1001 exceeds max_nesting_depth (1000)");
  // Depth made by mutation: d0[1] = {1: {1: ...}} through SETITEM, without any MARK.
  auto policy = with_limits([](Limits& l) { l.max_nesting_depth = 10; });
  auto chain = [](int levels) {
    P p;
    p.op(Op::kEmptyDict);
    for (int i = 0; i < levels; ++i) p.i(1).op(Op::kEmptyDict);
    for (int i = 0; i < levels; ++i) p.op(Op::kSetItem);
    return p.stop();
  };
  EXPECT_TRUE(parse(chain(10), policy));
  expect_error(parse(chain(11), policy), ErrorCode::kLimitExceeded, std::nullopt,
               "SETITEM: 11 exceeds max_nesting_depth");
  // ...and through APPEND.
  EXPECT_TRUE(parse(bytes_of("]]]]]]]]]]]aaaaaaaaaa."), policy));
  expect_error(parse(bytes_of("]]]]]]]]]]]]aaaaaaaaaaa."), policy), ErrorCode::kLimitExceeded, std::nullopt,
               "APPEND: 11 exceeds max_nesting_depth");
}

TEST(PickleVmLimits, MaxMemoEntries) {
  auto policy = with_limits([](Limits& l) { l.max_memo_entries = 2; });
  EXPECT_EQ(outcome("Nq\x00q\x00q\x00q\x01.", policy), "None");  // rewriting a slot is not a new entry
  expect_error(parse(bytes_of("Nq\x00q\x01q\x02."), policy), ErrorCode::kLimitExceeded, 5, "max_memo_entries");
  expect_error(parse(bytes_of("N\x94\x94\x94."), policy), ErrorCode::kLimitExceeded, 3,
               "MEMOIZE: 3 exceeds max_memo_entries");
}

TEST(PickleVmLimits, MaxMemoIndexAndSparseIndices) {
  auto policy = with_limits([](Limits& l) { l.max_memo_index = 1000; });
  EXPECT_EQ(outcome("Nr\xe8\x03\x00\x00"
                    "0j\xe8\x03\x00\x00.",
                    policy),
            "None");
  expect_error(parse(bytes_of("Nr\xe9\x03\x00\x00."), policy), ErrorCode::kLimitExceeded, 1,
               "LONG_BINPUT: 1001 exceeds max_memo_index");
  expect_error(parse(bytes_of("Np99999999999999999999\n."), policy), ErrorCode::kLimitExceeded, 1, "max_memo_index");
  // Far, scattered indices within the default limit cost memory per entry, not per index.
  auto sparse =
      parse(bytes_of("K\x01r\x00\xe1\xf5\x05K\x02r\x00\x00\x00\x00K\x03r\xff\xe0\xf5\x05"
                     "j\x00\xe1\xf5\x05j\xff\xe0\xf5\x05j\x00\x00\x00\x00\x87."));
  ASSERT_TRUE(sparse) << sparse.error().describe();
  EXPECT_EQ(render(*sparse), "(1, 3, 2)");
  // An index first written far away, then reached by dense growth, is still the same slot.
  P moving;
  moving.i(7).op(Op::kLongBinPut).le(3000, 4);
  for (int i = 0; i < 2000; ++i) moving.op(Op::kMemoize);
  moving.op(Op::kPop).i(8).op(Op::kLongBinPut).le(3000, 4).op(Op::kPop).op(Op::kLongBinGet).le(3000, 4).stop();
  EXPECT_EQ(outcome(moving, with_limits([](Limits& l) { l.max_memo_entries = 2001; })), "8");
}

TEST(PickleVmLimits, MaxStringLength) {
  auto policy = with_limits([](Limits& l) { l.max_string_length = 4; });
  EXPECT_EQ(outcome(P().s("abcd").stop(), policy), "'abcd'");
  expect_error(parse(P().s("abcde").stop(), policy), ErrorCode::kLimitExceeded, 0,
               "BINUNICODE: 5 exceeds max_string_length");
  expect_error(parse(P().op(Op::kBinBytes8).le(5, 8).raw("abcde").stop(), policy), ErrorCode::kLimitExceeded, 0,
               "BINBYTES8");
  expect_error(parse(P().op(Op::kByteArray8).le(1ull << 40, 8).stop(), policy), ErrorCode::kLimitExceeded, 0,
               "BYTEARRAY8");
  expect_error(parse(bytes_of("Vabcdef\n."), policy), ErrorCode::kLimitExceeded, 0,
               "UNICODE: 5 exceeds max_string_length");
  expect_error(parse(bytes_of("cbuiltins\nset\n."), policy), ErrorCode::kLimitExceeded, 0, "GLOBAL");
}

TEST(PickleVmLimits, MaxIntBytes) {
  auto policy = with_limits([](Limits& l) { l.max_int_bytes = 8; });
  EXPECT_EQ(outcome(P().op(Op::kLong1).byte(8).le(1, 8).stop(), policy), "1");
  expect_error(parse(P().op(Op::kLong1).byte(9).le(1, 8).byte(0).stop(), policy), ErrorCode::kLimitExceeded, 0,
               "LONG1: 9 exceeds max_int_bytes (8)");
  expect_error(parse(P().op(Op::kLong4).le(0x7FFFFFFF, 4).stop(), policy), ErrorCode::kLimitExceeded, 0, "LONG4");
  EXPECT_EQ(outcome("I12345678\n.", policy), "12345678");
  expect_error(parse(bytes_of("I123456789\n."), policy), ErrorCode::kLimitExceeded, 0, "INT: integer of 9 digits");
  expect_error(parse(bytes_of("L-123456789L\n."), policy), ErrorCode::kLimitExceeded, 0, "LONG");
  // The default bound keeps decimal conversion cheap: 4096 digits convert, 4097 do not.
  std::string big = "I" + std::string(4096, '9') + "\n.";
  EXPECT_TRUE(parse(std::vector<uint8_t>(big.begin(), big.end())));
  std::string bigger = "I" + std::string(4097, '9') + "\n.";
  EXPECT_FALSE(parse(std::vector<uint8_t>(bigger.begin(), bigger.end())));
}

TEST(PickleVmLimits, MaxTensorCount) {
  auto policy = with_limits([](Limits& l) { l.max_tensor_count = 1; });
  P two;
  two.proto(2).mark().tensor("0", 4, 0, {4}, {1}).tensor("0", 4, 0, {2}, {2}).op(Op::kList).stop();
  expect_error(parse(two, policy, archive_options()), ErrorCode::kLimitExceeded, std::nullopt,
               "REDUCE: 2 exceeds max_tensor_count (1)");
}

TEST(PickleVmLimits, FindingsPerPickleAreBounded) {
  P many;
  many.mark();
  for (int i = 0; i < 10'001; ++i) many.g("os", "system");
  many.op(Op::kList).stop();
  expect_error(parse(many, with_actions(Action::kDisarm)), ErrorCode::kLimitExceeded, std::nullopt, "findings");
}

TEST(PickleVmLimits, CollidingKeysAreRefused) {
  // Integers whose folded hashes are all equal follow one probe sequence: quadratic without a bound.
  P flood;
  flood.op(Op::kEmptyDict).mark();
  for (uint64_t i = 1; i <= 20'000; ++i) {
    uint64_t key = (i << 32) | static_cast<uint32_t>(i * 0x9E3779B1u);
    flood.op(Op::kLong1).byte(8).le(key, 8).none();
  }
  flood.op(Op::kSetItems).stop();
  expect_error(parse(flood), ErrorCode::kLimitExceeded, std::nullopt, "hash flooding");
  // The same count of ordinary keys is fine.
  P ordinary;
  ordinary.op(Op::kEmptyDict).mark();
  for (int64_t i = 1; i <= 20'000; ++i) ordinary.i(i * 1'000'003).none();
  ordinary.op(Op::kSetItems).stop();
  EXPECT_TRUE(parse(ordinary));
}

// ---------------------------------------------------------------------------------------------
// Findings, disarm and block

TEST(PickleVmFindings, ForbiddenGlobalIsRecordedWithItsOffset) {
  P pickle;
  pickle.proto(2)
      .op(Op::kEmptyDict)
      .s("ok")
      .i(1)
      .op(Op::kSetItem)
      .s("evil")
      .g("os", "system")
      .s("rm -rf /")
      .op(Op::kTuple1)
      .op(Op::kReduce)
      .op(Op::kSetItem)
      .stop();
  auto disarmed = parse(pickle, {}, archive_options());
  ASSERT_TRUE(disarmed) << disarmed.error().describe();
  EXPECT_EQ(render(*disarmed), "{'ok': 1}");
  ASSERT_EQ(disarmed->findings.size(), 1u);
  const Finding& finding = disarmed->findings[0];
  EXPECT_EQ(finding.kind, FindingKind::kForbiddenGlobal);
  EXPECT_EQ(finding.action, Action::kDisarm);
  EXPECT_EQ(finding.record, "archive/data.pkl");
  EXPECT_EQ(finding.offset, 22u);
  EXPECT_EQ(finding.construct, "GLOBAL os.system");
  EXPECT_FALSE(finding.reason.empty());
  // Nothing of the disarmed subtree is left anywhere in the tree.
  for (const Value& value : disarmed->tree.nodes) {
    const auto* text = std::get_if<StrValue>(&value);
    EXPECT_FALSE(text && (text->utf8 == "rm -rf /" || text->utf8 == "evil"));
  }
  ASSERT_EQ(disarmed->globals_seen.size(), 1u);
  EXPECT_EQ(disarmed->globals_seen[0], (GlobalName{"os", "system"}));

  auto blocked = parse(pickle, with_actions(Action::kBlock), archive_options());
  expect_error(blocked, ErrorCode::kForbidden, 22, "forbidden_global: GLOBAL os.system");
}

TEST(PickleVmFindings, PoisonPropagatesAndIsDroppedByContainers) {
  const Policy disarm = with_actions(Action::kDisarm);
  // Through a tuple into a list, as a dict key and as a dict value, into a set and an OrderedDict.
  EXPECT_EQ(outcome("(K\x01(cos\nsystem\nK\x02tK\x03l.", disarm), "[1, 3]");
  EXPECT_EQ(outcome("(cos\nsystem\nK\x01K\x02K\x03"
                    "d.",
                    disarm),
            "{2: 3}");
  EXPECT_EQ(outcome("}(K\x01"
                    "cos\nsystem\nK\x02K\x03u.",
                    disarm),
            "{2: 3}");
  EXPECT_EQ(outcome("\x8f(cos\nsystem\nK\x02\x90.", disarm), "set{2}");
  EXPECT_EQ(outcome("(cos\nsystem\nK\x02\x91.", disarm), "frozenset{2}");
  EXPECT_EQ(
      outcome(P().ordered_dict().s("a").g("os", "system").op(Op::kSetItem).s("b").i(1).op(Op::kSetItem).stop(), disarm),
      "OrderedDict{'b': 1}");
  // Through the memo: the poisoned slot stays poisoned.
  EXPECT_EQ(outcome("]cos\nsystem\nq\x00"
                    "ah\x00"
                    "aK\x01"
                    "a.",
                    disarm),
            "[1]");
  // As call arguments and as the callable: the call is poisoned, not re-reported.
  auto call = parse(P().op(Op::kEmptyList)
                        .g("torch", "Size")
                        .mark()
                        .g("os", "system")
                        .op(Op::kTuple)
                        .op(Op::kTuple1)
                        .op(Op::kReduce)
                        .op(Op::kAppend)
                        .stop(),
                    disarm);
  ASSERT_TRUE(call) << call.error().describe();
  EXPECT_EQ(render(*call), "[]");
  EXPECT_EQ(call->findings.size(), 1u);
  // As BUILD state: the built object is dropped.
  EXPECT_EQ(
      outcome(P().op(Op::kEmptyList).ordered_dict().g("os", "system").op(Op::kBuild).op(Op::kAppend).stop(), disarm),
      "[]");
  // As a persistent id.
  EXPECT_EQ(outcome(P().op(Op::kEmptyList).g("os", "system").op(Op::kBinPersId).op(Op::kAppend).stop(), disarm,
                    archive_options()),
            "[]");
  // Into a Namespace's BUILD state.
  EXPECT_EQ(outcome(P().g("argparse", "Namespace")
                        .op(Op::kEmptyTuple)
                        .op(Op::kNewObj)
                        .op(Op::kEmptyDict)
                        .s("a")
                        .g("os", "system")
                        .op(Op::kSetItem)
                        .s("b")
                        .i(2)
                        .op(Op::kSetItem)
                        .op(Op::kBuild)
                        .stop(),
                    disarm),
            "Namespace{'b': 2}");
}

TEST(PickleVmFindings, UnsafeRootIsAlwaysAnError) {
  const Policy disarm = with_actions(Action::kDisarm);
  expect_error(parse(bytes_of("cos\nsystem\n."), disarm), ErrorCode::kForbidden, 11, "STOP: unsafe root");
  expect_error(parse(bytes_of("(cos\nsystem\nt."), disarm), ErrorCode::kForbidden, 13, "unsafe root");
  expect_error(parse(bytes_of("N(."), disarm), ErrorCode::kForbidden, 2, "STOP: unsafe root: 1 MARK(s) still open");
  expect_error(parse(bytes_of("(N."), disarm), ErrorCode::kForbidden, 2, "unsafe root");
  // A callable is no value: as the root it is a finding, then an unsafe root.
  auto callable = parse(bytes_of("ccollections\nOrderedDict\n."), disarm);
  expect_error(callable, ErrorCode::kForbidden, 25, "unsafe root");
  expect_error(parse(bytes_of("ccollections\nOrderedDict\n."), with_actions(Action::kBlock)), ErrorCode::kForbidden, 25,
               "forbidden_global: STOP of global collections.OrderedDict");
}

TEST(PickleVmFindings, CallablesAndUnfinishedObjectsAreNoValues) {
  const Policy disarm = with_actions(Action::kDisarm);
  auto stored =
      parse(P().op(Op::kEmptyList).g("torch._utils", "_rebuild_tensor_v2").op(Op::kAppend).i(1).op(Op::kAppend).stop(),
            disarm);
  ASSERT_TRUE(stored);
  EXPECT_EQ(render(*stored), "[1]");
  ASSERT_EQ(stored->findings.size(), 1u);
  EXPECT_EQ(stored->findings[0].construct, "APPEND of global torch._utils._rebuild_tensor_v2");
  // Held in a tuple, it is found there too.
  EXPECT_EQ(outcome(P().op(Op::kEmptyList).g("builtins", "object").i(1).op(Op::kTuple2).op(Op::kAppend).stop(), disarm),
            "[]");
  // A numpy array that never got its BUILD.
  auto unfinished = parse(P().op(Op::kEmptyList)
                              .g("numpy.core.multiarray", "_reconstruct")
                              .g("numpy", "ndarray")
                              .ints({0})
                              .b("b")
                              .op(Op::kTuple3)
                              .op(Op::kReduce)
                              .op(Op::kAppend)
                              .stop(),
                          disarm);
  ASSERT_TRUE(unfinished);
  EXPECT_EQ(render(*unfinished), "[]");
  ASSERT_EQ(unfinished->findings.size(), 1u);
  EXPECT_EQ(unfinished->findings[0].kind, FindingKind::kForbiddenBuild);
}

TEST(PickleVmFindings, ExactPairsOnlyNeverPrefixesOrAttributePaths) {
  const Policy disarm = with_actions(Action::kDisarm);
  for (const char* pickle :
       {"ctorch\nTensor.add_\n.", "ctorch.Tensor\nadd_\n.", "ctorch\n__builtins__\n.",
        "ctorch._utils\n_rebuild_tensor_v2.__globals__\n.", "ctorch\nSize \n.", "ctorch\nFloatStorage.__init__\n.",
        "ccollections.OrderedDict\n__reduce__\n.", "ctorch\nPyObjectStorage\n.", "ctorch\nhalf\n."}) {
    auto result = parse(std::vector<uint8_t>(pickle, pickle + std::strlen(pickle)), disarm);
    expect_error(result, ErrorCode::kForbidden, std::nullopt, "unsafe root");
  }
  auto seen = parse(bytes_of("(ctorch\nTensor.add_\nctorch\nTensor.add_\nctorch\nfloat32\nl."), disarm);
  ASSERT_TRUE(seen);
  EXPECT_EQ(render(*seen), "[torch.float32]");
  EXPECT_EQ(seen->findings.size(), 2u);
  ASSERT_EQ(seen->globals_seen.size(), 2u);
  EXPECT_EQ(seen->globals_seen[0], (GlobalName{"torch", "Tensor.add_"}));
  EXPECT_EQ(seen->globals_seen[1], (GlobalName{"torch", "float32"}));
  EXPECT_TRUE(is_builtin_allowed(GlobalName{"torch._utils", "_rebuild_tensor_v2"}));
  EXPECT_TRUE(is_builtin_allowed(GlobalName{"torch", "BFloat16Storage"}));
  EXPECT_TRUE(is_builtin_allowed(GlobalName{"numpy._core.numeric", "_frombuffer"}));
  EXPECT_FALSE(is_builtin_allowed(GlobalName{"torch", "Tensor.add_"}));
  EXPECT_FALSE(is_builtin_allowed(GlobalName{"__builtin__", "set"}));  // only through fix_imports
  EXPECT_FALSE(is_builtin_allowed(GlobalName{"builtins", "eval"}));
}

TEST(PickleVmFindings, FixImportsOnlyBelowProtocol3) {
  EXPECT_EQ(outcome("c__builtin__\nset\n(]tR."), "set{}");
  EXPECT_EQ(
      outcome(P().proto(2).g("__builtin__", "frozenset").op(Op::kEmptyList).op(Op::kTuple1).op(Op::kReduce).stop()),
      "frozenset{}");
  expect_error(parse(P().proto(3).g("__builtin__", "set").op(Op::kEmptyList).op(Op::kTuple1).op(Op::kReduce).stop(),
                     with_actions(Action::kBlock)),
               ErrorCode::kForbidden, 2, "GLOBAL __builtin__.set");
}

TEST(PickleVmFindings, WrongTargetsForMutationAndBuild) {
  const Policy disarm = with_actions(Action::kDisarm);
  struct Case {
    P pickle;
    std::string construct;
    std::string result = "[]";
  };
  std::vector<Case> cases;
  cases.push_back(
      {P().op(Op::kEmptyList).op(Op::kEmptyDict).i(1).op(Op::kAppend).op(Op::kAppend).stop(), "APPEND on dict"});
  cases.push_back(
      {P().op(Op::kEmptyList).op(Op::kEmptyList).i(1).i(2).op(Op::kSetItem).op(Op::kAppend).stop(), "SETITEM on list"});
  cases.push_back({P().op(Op::kEmptyList)
                       .g("argparse", "Namespace")
                       .op(Op::kEmptyTuple)
                       .op(Op::kNewObj)
                       .s("a")
                       .i(2)
                       .op(Op::kSetItem)
                       .op(Op::kAppend)
                       .stop(),
                   "SETITEM on argparse.Namespace"});
  cases.push_back(
      {P().op(Op::kEmptyList).mark().i(1).op(Op::kFrozenSet).mark().i(2).op(Op::kAddItems).op(Op::kAppend).stop(),
       "ADDITEMS on frozenset"});
  cases.push_back({P().op(Op::kEmptyList).op(Op::kEmptyList).op(Op::kEmptyDict).op(Op::kBuild).op(Op::kAppend).stop(),
                   "BUILD on list"});
  cases.push_back({P().op(Op::kEmptyList)
                       .ordered_dict()
                       .op(Op::kEmptyDict)
                       .op(Op::kBuild)
                       .op(Op::kEmptyDict)
                       .op(Op::kBuild)
                       .op(Op::kAppend)
                       .stop(),
                   "BUILD on OrderedDict"});
  cases.push_back(
      {P().op(Op::kEmptyList).ordered_dict().mark().i(1).i(2).op(Op::kDict).op(Op::kBuild).op(Op::kAppend).stop(),
       "BUILD on OrderedDict"});
  cases.push_back(
      {P().op(Op::kEmptyList).op(Op::kEmptyDict).op(Op::kEmptyList).i(1).op(Op::kSetItem).op(Op::kAppend).stop(),
       "SETITEM with a list key", "[{}]"});
  for (auto& [pickle, construct, expected] : cases) {
    auto result = parse(pickle, disarm);
    ASSERT_TRUE(result) << construct << ": " << result.error().describe();
    EXPECT_EQ(render(*result), expected) << construct;
    ASSERT_EQ(result->findings.size(), 1u) << construct;
    EXPECT_EQ(result->findings[0].kind, FindingKind::kForbiddenBuild) << construct;
    EXPECT_EQ(result->findings[0].construct, construct);
    expect_error(parse(pickle, with_actions(Action::kBlock)), ErrorCode::kForbidden, std::nullopt, construct);
  }
}

// ---------------------------------------------------------------------------------------------
// Dict and set semantics

TEST(PickleVmKeys, LastWriteWinsAndKeysCompareByValue) {
  // {1: 'a', True: 'b', 1.0: 'c'} is {1: 'c'} in Python: the first key object stays.
  EXPECT_EQ(outcome(P().op(Op::kEmptyDict)
                        .mark()
                        .i(1)
                        .s("a")
                        .boolean(true)
                        .s("b")
                        .raw("G\x3f\xf0")
                        .le(0, 6)
                        .s("c")
                        .op(Op::kSetItems)
                        .stop()),
            "{1: 'c'}");
  EXPECT_EQ(outcome(P().mark().s("k").i(1).b("k").i(2).s("k").i(3).op(Op::kDict).stop()), "{'k': 3, b'k': 2}");
  // Tuples compare item by item; 0.0 == -0.0; each NaN node is a key of its own unless it is the same node.
  EXPECT_EQ(outcome(P().mark()
                        .i(1)
                        .i(2)
                        .op(Op::kTuple2)
                        .s("x")
                        .i(1)
                        .raw("G")
                        .le(0x0000000000000040, 8)
                        .op(Op::kTuple2)
                        .s("y")
                        .op(Op::kDict)
                        .stop()),
            "{(1, 2): 'y'}");
  EXPECT_EQ(outcome("(F0.0\nK\x01"
                    "F-0.0\nK\x02"
                    "d."),
            "{float(0000000000000000): 2}");
  EXPECT_EQ(outcome("(Fnan\nK\x01"
                    "Fnan\nK\x02"
                    "d."),
            "{float(7ff8000000000000): 1, float(7ff8000000000000): 2}");
  EXPECT_EQ(outcome("(Fnan\nq\x00K\x01h\x00K\x02"
                    "d."),
            "{float(7ff8000000000000): 2}");
  // Big ints equal to integral floats.
  EXPECT_EQ(
      outcome(
          P().mark().op(Op::kLong1).byte(9).le(0, 8).byte(1).i(1).raw("G\x43\xf0").le(0, 6).i(2).op(Op::kDict).stop()),
      "{18446744073709551616: 2}");
  // Sets keep the first of equal items; large containers go through the index.
  EXPECT_EQ(outcome("(K\x01\x88K\x01\x91."), "frozenset{1}");
  P large;
  large.op(Op::kEmptyDict).mark();
  for (int i = 0; i < 100; ++i) large.i(i % 50).i(i);
  large.op(Op::kSetItems).stop();
  auto indexed = parse(large);
  ASSERT_TRUE(indexed);
  const auto& items = std::get<DictValue>(indexed->tree.at(indexed->tree.root)).items;
  ASSERT_EQ(items.size(), 50u);
  EXPECT_EQ(std::get<IntValue>(indexed->tree.at(items[7].second)).small, 57);
}

TEST(PickleVmKeys, AllowedKeyKinds) {
  const Policy disarm = with_actions(Action::kDisarm);
  EXPECT_EQ(outcome(P().mark()
                        .none()
                        .i(1)
                        .g("torch", "float32")
                        .i(2)
                        .mark()
                        .i(1)
                        .s("a")
                        .b("b")
                        .op(Op::kTuple)
                        .i(3)
                        .op(Op::kDict)
                        .stop()),
            "{None: 1, torch.float32: 2, (1, 'a', b'b'): 3}");
  for (P key : {P().op(Op::kEmptyList), P().op(Op::kEmptyDict), P().op(Op::kByteArray8).le(0, 8),
                P().op(Op::kEmptyList).op(Op::kTuple1), P().op(Op::kEmptySet)}) {
    P pickle;
    pickle.op(Op::kEmptyDict).append(key).i(1).op(Op::kSetItem).stop();
    auto result = parse(pickle, disarm);
    ASSERT_TRUE(result) << result.error().describe();
    EXPECT_EQ(render(*result), "{}");
    EXPECT_EQ(result->findings.size(), 1u);
  }
}

// ---------------------------------------------------------------------------------------------
// Persistent ids (PyTorch storage references)

TEST(PickleVmStorage, SameKeyIsSameNodeAndConflictsAreFindings) {
  P pickle;
  pickle.proto(2).mark().tensor("0", 6, 0, {2, 3}, {3, 1}).tensor("0", 6, 1, {2}, {3}).op(Op::kList).stop();
  auto shared = parse(pickle, {}, archive_options());
  ASSERT_TRUE(shared) << shared->tree.nodes.size();
  EXPECT_EQ(render(*shared),
            "[Tensor(Storage(FloatStorage, 'cpu', 6), 0, (2, 3), (3, 1), False), "
            "Tensor(Storage(FloatStorage, 'cpu', 6), 1, (2), (3), False)]");
  const auto& items = std::get<ListValue>(shared->tree.at(shared->tree.root)).items;
  EXPECT_EQ(std::get<TensorValue>(shared->tree.at(items[0])).storage,
            std::get<TensorValue>(shared->tree.at(items[1])).storage);

  // A second reference to key "0" with another size (or type) is refused, by default with a block.
  P conflicting;
  conflicting.proto(2).mark().storage("0", 6).storage("0", 7).op(Op::kList).stop();
  expect_error(parse(conflicting, {}, archive_options()), ErrorCode::kForbidden, std::nullopt,
               "forbidden_persistent_id: BINPERSID storage '0'");
  P retyped;
  retyped.proto(2).mark().storage("0", 6).storage("0", 6, "HalfStorage").op(Op::kList).stop();
  auto disarmed = parse(retyped, with_actions(Action::kDisarm), archive_options());
  ASSERT_TRUE(disarmed);
  EXPECT_EQ(render(*disarmed), "[Storage(FloatStorage, 'cpu', 6)]");
}

TEST(PickleVmStorage, ModesDecideWhatAPersistentIdMayBe) {
  const Policy disarm = with_actions(Action::kDisarm);
  P archive_form;
  archive_form.proto(2).op(Op::kEmptyList).storage("k", 4).op(Op::kAppend).stop();
  EXPECT_EQ(outcome(archive_form, disarm, archive_options()), "[Storage(FloatStorage, 'cpu', 4)]");
  // Plain pickles have no persistent ids at all.
  auto plain = parse(archive_form, disarm);
  ASSERT_TRUE(plain);
  EXPECT_EQ(render(*plain), "[]");
  ASSERT_EQ(plain->findings.size(), 1u);
  EXPECT_EQ(plain->findings[0].kind, FindingKind::kForbiddenPersistentId);
  EXPECT_EQ(plain->findings[0].construct, "BINPERSID of tuple");
  // The legacy format has a sixth item, which must be None.
  PickleParseOptions legacy;
  legacy.persistent_ids = PersistentIdMode::kTorchLegacy;
  auto legacy_form = [](auto&& last) {
    P p;
    p.proto(2).op(Op::kEmptyList).mark().s("storage").g("torch", "LongStorage").s("140").s("cuda:0").i(3);
    last(p);
    return p.op(Op::kTuple).op(Op::kBinPersId).op(Op::kAppend).stop();
  };
  EXPECT_EQ(outcome(legacy_form([](P& p) { p.none(); }), disarm, legacy), "[Storage(LongStorage, 'cuda:0', 3)]");
  EXPECT_EQ(outcome(legacy_form([](P& p) { p.mark().s("view").i(0).i(1).op(Op::kTuple); }), disarm, legacy), "[]");
  EXPECT_EQ(outcome(legacy_form([](P& p) { p.none(); }), disarm, archive_options()), "[]");
  EXPECT_EQ(outcome(archive_form, disarm, legacy), "[]");
  // Malformed storage tuples.
  for (auto make : std::vector<std::function<void(P&)>>{
           [](P& p) { p.mark().s("storagex").g("torch", "FloatStorage").s("k").s("cpu").i(1).op(Op::kTuple); },
           [](P& p) { p.mark().s("storage").g("torch", "Size").s("k").s("cpu").i(1).op(Op::kTuple); },
           [](P& p) { p.mark().s("storage").g("torch", "FloatStorage").i(0).s("cpu").i(1).op(Op::kTuple); },
           [](P& p) { p.mark().s("storage").g("torch", "FloatStorage").s("k").s("cpu").i(-1).op(Op::kTuple); },
           [](P& p) { p.mark().s("storage").g("torch", "FloatStorage").s("k").s("cpu").op(Op::kTuple); },
           [](P& p) { p.s("storage"); },
       }) {
    P pickle;
    pickle.proto(2).op(Op::kEmptyList);
    make(pickle);
    pickle.op(Op::kBinPersId).op(Op::kAppend).stop();
    auto result = parse(pickle, disarm, archive_options());
    ASSERT_TRUE(result) << result.error().describe();
    EXPECT_EQ(render(*result), "[]");
    EXPECT_EQ(result->findings.size(), 1u);
  }
}

// ---------------------------------------------------------------------------------------------
// The built-in allowlist, entry by entry

// The finding a disarmed call produces, or "" when the stream parsed without one.
std::string call_finding(const P& pickle, const PickleParseOptions& options = archive_options()) {
  P wrapped;
  wrapped.op(Op::kEmptyList).append(pickle).op(Op::kAppend).stop();
  auto result = parse(wrapped, with_actions(Action::kDisarm), options);
  if (!result) return "error: " + result.error().describe();
  if (result->findings.empty()) return "";
  return result->findings[0].construct + ": " + result->findings[0].reason;
}

TEST(PickleVmAllowlist, RebuildTensorV2) {
  P good;
  good.proto(2)
      .g("torch._utils", "_rebuild_tensor_v2")
      .mark()
      .storage("0", 12)
      .i(2)
      .ints({2, 5})
      .ints({5, 1})
      .boolean(true)
      .ordered_dict()
      .op(Op::kEmptyDict)
      .op(Op::kTuple)
      .op(Op::kReduce)
      .stop();
  auto parsed = parse(good, {}, archive_options());
  ASSERT_TRUE(parsed) << parsed.error().describe();
  EXPECT_EQ(render(*parsed), "Tensor(Storage(FloatStorage, 'cpu', 12), 2, (2, 5), (5, 1), True)");
  const auto& tensor = std::get<TensorValue>(parsed->tree.at(parsed->tree.root));
  EXPECT_FALSE(tensor.rebuild_v1);
  ASSERT_TRUE(tensor.metadata);
  EXPECT_TRUE(std::holds_alternative<DictValue>(parsed->tree.at(*tensor.metadata)));
  // torch.Size as the size argument, a 0-d tensor, an empty view whose offset is the storage's end.
  EXPECT_EQ(outcome(P().proto(2)
                        .g("torch._utils", "_rebuild_tensor_v2")
                        .mark()
                        .storage("0", 3)
                        .i(0)
                        .g("torch", "Size")
                        .ints({3})
                        .op(Op::kTuple1)
                        .op(Op::kReduce)
                        .ints({1})
                        .boolean(false)
                        .ordered_dict()
                        .op(Op::kTuple)
                        .op(Op::kReduce)
                        .stop(),
                    {}, archive_options()),
            "Tensor(Storage(FloatStorage, 'cpu', 3), 0, (3), (1), False)");
  EXPECT_EQ(outcome(P().proto(2).tensor("0", 1, 0, {}, {}).stop(), {}, archive_options()),
            "Tensor(Storage(FloatStorage, 'cpu', 1), 0, (), (), False)");
  EXPECT_EQ(outcome(P().proto(2).tensor("0", 4, 4, {0, 3}, {3, 1}).stop(), {}, archive_options()),
            "Tensor(Storage(FloatStorage, 'cpu', 4), 4, (0, 3), (3, 1), False)");

  auto wrong = [](int64_t numel, int64_t offset, std::vector<int64_t> sizes, std::vector<int64_t> strides) {
    return call_finding(P().tensor("0", numel, offset, sizes, strides));
  };
  EXPECT_EQ(wrong(6, 0, {2, 3}, {3, 1}), "");
  EXPECT_EQ(wrong(6, 1, {2, 3}, {3, 1}),
            "REDUCE torch._utils._rebuild_tensor_v2: the view reaches past the end of its storage of 6 elements");
  EXPECT_EQ(wrong(0, 0, {}, {}),
            "REDUCE torch._utils._rebuild_tensor_v2: the view reaches past the end of its storage of 0 elements");
  EXPECT_EQ(wrong(4, 5, {0}, {1}),
            "REDUCE torch._utils._rebuild_tensor_v2: the view reaches past the end of its storage of 4 elements");
  EXPECT_EQ(wrong(6, 0, {2, 3}, {3}), "REDUCE torch._utils._rebuild_tensor_v2: size and stride differ in length");
  EXPECT_EQ(wrong(6, 0, {2, 3}, {-3, 1}),
            "REDUCE torch._utils._rebuild_tensor_v2: sizes and strides must be non-negative");
  EXPECT_EQ(wrong(6, -1, {1}, {1}),
            "REDUCE torch._utils._rebuild_tensor_v2: argument 2 (storage offset) must be a non-negative int");
  // Products and sums that overflow 64 bits are caught, not wrapped.
  EXPECT_EQ(wrong(6, 0, {INT64_MAX, 3}, {INT64_MAX, 1}),
            "REDUCE torch._utils._rebuild_tensor_v2: the view reaches past the end of its storage of 6 elements");
  EXPECT_EQ(wrong(6, INT64_MAX, {2}, {INT64_MAX}),
            "REDUCE torch._utils._rebuild_tensor_v2: the view reaches past the end of its storage of 6 elements");
  // Argument kinds.
  auto with_args = [](auto&& args) {
    P p;
    p.g("torch._utils", "_rebuild_tensor_v2").mark();
    args(p);
    return call_finding(p.op(Op::kTuple).op(Op::kReduce));
  };
  EXPECT_EQ(with_args([](P& p) { p.storage("0", 4).i(0).ints({4}).ints({1}).boolean(false).ordered_dict(); }), "");
  EXPECT_NE(with_args([](P& p) { p.i(0).i(0).ints({4}).ints({1}).boolean(false).ordered_dict(); }).find("argument 1"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) { p.storage("0", 4).i(0).ints({4}).ints({1}).i(0).ordered_dict(); }).find("argument 5"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) {
              p.storage("0", 4).i(0).ints({4}).ints({1}).boolean(false).ordered_dict().s("h").i(1).op(Op::kSetItem);
            }).find("argument 6"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) {
              p.storage("0", 4).i(0).ints({4}).ints({1}).boolean(false).op(Op::kEmptyDict);
            }).find("argument 6"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) {
              p.storage("0", 4).i(0).ints({4}).ints({1}).boolean(false).ordered_dict().i(3);
            }).find("argument 7"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) {
              p.storage("0", 4).i(0).op(Op::kEmptyList).ints({1}).boolean(false).ordered_dict();
            }).find("argument 3"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) { p.storage("0", 4).i(0).ints({4}).boolean(false).ordered_dict(); }).find("6 or 7"),
            std::string::npos);
  EXPECT_NE(with_args([](P& p) {
              p.storage("0", 4)
                  .i(0)
                  .ints({4})
                  .op(Op::kLong1)
                  .byte(9)
                  .le(0, 8)
                  .byte(1)
                  .op(Op::kTuple1)
                  .boolean(false)
                  .ordered_dict();
            }).find("argument 4"),
            std::string::npos);
}

TEST(PickleVmAllowlist, RebuildTensorV1ParametersAndFromType) {
  EXPECT_EQ(outcome(P().proto(2)
                        .g("torch._utils", "_rebuild_tensor")
                        .mark()
                        .storage("0", 4)
                        .i(0)
                        .ints({4})
                        .ints({1})
                        .op(Op::kTuple)
                        .op(Op::kReduce)
                        .stop(),
                    {}, archive_options()),
            "Tensor(Storage(FloatStorage, 'cpu', 4), 0, (4), (1), False)");
  EXPECT_NE(call_finding(P().g("torch._utils", "_rebuild_tensor")
                             .mark()
                             .storage("0", 4)
                             .i(0)
                             .ints({4})
                             .ints({1})
                             .boolean(false)
                             .ordered_dict()
                             .op(Op::kTuple)
                             .op(Op::kReduce))
                .find("expects 4 arguments"),
            std::string::npos);

  auto parameter = [](std::string_view name, auto&& extra) {
    P p;
    p.proto(2).g("torch._utils", name).mark().tensor("0", 4, 0, {4}, {1});
    extra(p);
    return p.op(Op::kTuple).op(Op::kReduce).stop();
  };
  const std::string tensor = "Tensor(Storage(FloatStorage, 'cpu', 4), 0, (4), (1), False)";
  EXPECT_EQ(
      outcome(parameter("_rebuild_parameter", [](P& p) { p.boolean(true).ordered_dict(); }), {}, archive_options()),
      "Parameter(" + tensor + ", True)");
  EXPECT_EQ(outcome(parameter("_rebuild_parameter_with_state", [](P& p) { p.boolean(false).ordered_dict().none(); }),
                    {}, archive_options()),
            "Parameter(" + tensor + ", False)");
  EXPECT_EQ(outcome(parameter("_rebuild_parameter_with_state",
                              [](P& p) { p.boolean(false).ordered_dict().op(Op::kEmptyDict); }),
                    {}, archive_options()),
            "Parameter(" + tensor + ", False)");
  expect_error(parse(parameter("_rebuild_parameter_with_state",
                               [](P& p) { p.boolean(false).ordered_dict().mark().s("x").i(1).op(Op::kDict); }),
                     with_actions(Action::kBlock), archive_options()),
               ErrorCode::kForbidden, std::nullopt, "argument 4 (state) must be None or an empty dict");
  expect_error(parse(parameter("_rebuild_parameter", [](P& p) { p.i(1).ordered_dict(); }), with_actions(Action::kBlock),
                     archive_options()),
               ErrorCode::kForbidden, std::nullopt, "argument 2 (requires_grad) must be a bool");
  // Parameter(tensor[, requires_grad]) through NEWOBJ.
  EXPECT_EQ(outcome(P().proto(2)
                        .g("torch.nn.parameter", "Parameter")
                        .tensor("0", 4, 0, {4}, {1})
                        .op(Op::kTuple1)
                        .op(Op::kNewObj)
                        .stop(),
                    {}, archive_options()),
            "Parameter(" + tensor + ", True)");
  EXPECT_EQ(outcome(P().proto(2)
                        .g("torch.nn.parameter", "Parameter")
                        .tensor("0", 4, 0, {4}, {1})
                        .boolean(false)
                        .op(Op::kTuple2)
                        .op(Op::kNewObj)
                        .stop(),
                    {}, archive_options()),
            "Parameter(" + tensor + ", False)");
  EXPECT_NE(call_finding(P().g("torch.nn.parameter", "Parameter").i(1).op(Op::kTuple1).op(Op::kNewObj))
                .find("argument 1 must be a tensor"),
            std::string::npos);

  // _rebuild_from_type_v2(_rebuild_tensor_v2, torch.Tensor or Parameter, args, None or {})
  auto from_type = [](std::string_view module, std::string_view name, auto&& state) {
    P p;
    p.proto(2)
        .g("torch._tensor", "_rebuild_from_type_v2")
        .mark()
        .g("torch._utils", "_rebuild_tensor_v2")
        .g(module, name);
    p.mark().storage("0", 4).i(0).ints({4}).ints({1}).boolean(true).ordered_dict().op(Op::kTuple);
    state(p);
    return p.op(Op::kTuple).op(Op::kReduce).stop();
  };
  EXPECT_EQ(outcome(from_type("torch", "Tensor", [](P& p) { p.none(); }), {}, archive_options()),
            "Tensor(Storage(FloatStorage, 'cpu', 4), 0, (4), (1), True)");
  EXPECT_EQ(
      outcome(from_type("torch.nn.parameter", "Parameter", [](P& p) { p.op(Op::kEmptyDict); }), {}, archive_options()),
      "Parameter(Tensor(Storage(FloatStorage, 'cpu', 4), 0, (4), (1), True), True)");
  const Policy block = with_actions(Action::kBlock);
  expect_error(
      parse(from_type("torch", "Tensor", [](P& p) { p.mark().s("a").i(1).op(Op::kDict); }), block, archive_options()),
      ErrorCode::kForbidden, std::nullopt, "argument 4 (state)");
  expect_error(parse(from_type("torch", "Size", [](P& p) { p.none(); }), block, archive_options()),
               ErrorCode::kForbidden, std::nullopt, "argument 2 must be torch.Tensor");
  P other_func;
  other_func.proto(2)
      .g("torch._tensor", "_rebuild_from_type_v2")
      .mark()
      .g("torch._utils", "_rebuild_tensor")
      .g("torch", "Tensor")
      .op(Op::kEmptyTuple)
      .none()
      .op(Op::kTuple)
      .op(Op::kReduce)
      .stop();
  expect_error(parse(other_func, block, archive_options()), ErrorCode::kForbidden, std::nullopt,
               "argument 1 must be torch._utils._rebuild_tensor_v2");
}

TEST(PickleVmAllowlist, TorchValuesAndSize) {
  EXPECT_EQ(outcome("(ctorch\nSize\n((K\x02K\x03ttRctorch\nTensor\nctorch\nQInt8Storage\nctorch\ncomplex32\n"
                    "ctorch\nfloat8_e4m3fn\nctorch.nn.parameter\nParameter\nl."),
            "[Size(2, 3), torch.Tensor, torch.QInt8Storage, torch.complex32, torch.float8_e4m3fn, "
            "torch.nn.parameter.Parameter]");
  EXPECT_NE(
      call_finding(P().g("torch", "Size").s("x").op(Op::kTuple1).op(Op::kReduce)).find("expects one tuple of ints"),
      std::string::npos);
  EXPECT_NE(call_finding(P().g("torch", "Tensor").op(Op::kEmptyTuple).op(Op::kReduce)).find("is not callable"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("torch", "float32").op(Op::kEmptyTuple).op(Op::kReduce)).find("is not callable"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("torch._utils", "_rebuild_tensor_v2").op(Op::kEmptyTuple).op(Op::kNewObj))
                .find("is not constructed with NEWOBJ"),
            std::string::npos);
  EXPECT_EQ(call_finding(P().i(1).op(Op::kEmptyTuple).op(Op::kReduce)),
            "REDUCE of int: only allowlisted globals may be called");
  EXPECT_NE(call_finding(P().g("torch", "Size").op(Op::kEmptyList).op(Op::kReduce)).find("not a tuple"),
            std::string::npos);
}

TEST(PickleVmAllowlist, OrderedDictForms) {
  EXPECT_EQ(outcome(P().ordered_dict().stop()), "OrderedDict{}");
  EXPECT_EQ(outcome(P().proto(2).g("collections", "OrderedDict").op(Op::kEmptyTuple).op(Op::kNewObj).stop()),
            "OrderedDict{}");
  EXPECT_EQ(outcome(P().g("collections", "OrderedDict")
                        .mark()
                        .s("a")
                        .i(1)
                        .op(Op::kTuple2)
                        .s("b")
                        .i(2)
                        .op(Op::kTuple2)
                        .s("a")
                        .i(3)
                        .op(Op::kTuple2)
                        .op(Op::kList)
                        .op(Op::kTuple1)
                        .op(Op::kReduce)
                        .stop()),
            "OrderedDict{'a': 3, 'b': 2}");
  // state_dict()'s _metadata arrives through BUILD and is copied, as Python copies it into __dict__.
  auto built = parse(P().ordered_dict()
                         .s("w")
                         .i(1)
                         .op(Op::kSetItem)
                         .op(Op::kEmptyDict)
                         .op(Op::kBinPut)
                         .byte(0)
                         .s("_metadata")
                         .ordered_dict()
                         .op(Op::kSetItem)
                         .op(Op::kBuild)
                         .op(Op::kBinGet)
                         .byte(0)
                         .s("late")
                         .i(1)
                         .op(Op::kSetItem)
                         .op(Op::kPop)
                         .stop());
  ASSERT_TRUE(built) << built.error().describe();
  EXPECT_EQ(render(*built), "OrderedDict{'w': 1}@{'_metadata': OrderedDict{}}");
  EXPECT_NE(call_finding(P().g("collections", "OrderedDict").i(1).op(Op::kTuple1).op(Op::kReduce))
                .find("expects no arguments or one list"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("collections", "OrderedDict").mark().i(1).op(Op::kList).op(Op::kTuple1).op(Op::kReduce))
                .find("(key, value) tuples"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("collections", "OrderedDict")
                             .mark()
                             .op(Op::kEmptyList)
                             .i(1)
                             .op(Op::kTuple2)
                             .op(Op::kList)
                             .op(Op::kTuple1)
                             .op(Op::kReduce))
                .find("not hashable"),
            std::string::npos);
}

TEST(PickleVmAllowlist, NumpyArraysScalarsAndDtypes) {
  // _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, dtype, fortran, data)
  auto array = [](std::string_view typestr, std::string_view order, const std::vector<int64_t>& shape, bool fortran,
                  std::string_view data) {
    P p;
    p.proto(2)
        .g("numpy.core.multiarray", "_reconstruct")
        .g("numpy", "ndarray")
        .ints({0})
        .b("b")
        .op(Op::kTuple3)
        .op(Op::kReduce);
    p.mark().i(1).ints(shape).dtype(typestr, order).boolean(fortran).b(data).op(Op::kTuple).op(Op::kBuild);
    return p;
  };
  EXPECT_EQ(outcome(P(array("f8", "<", {2}, false, std::string(16, '\x01'))).stop()),
            "ndarray(dtype('<f8'), (2), C, 01010101010101010101010101010101)");
  // numpy restores a big-endian array in native order, bytes swapped element by element.
  EXPECT_EQ(outcome(P(array("i2", ">", {2, 1}, true, "abcd")).stop()), "ndarray(dtype('<i2'), (2, 1), F, 62616463)");
  EXPECT_EQ(outcome(P(array("b1", "|", {0}, false, "")).stop()), "ndarray(dtype('|b1'), (0), C, )");
  const Policy block = with_actions(Action::kBlock);
  expect_error(parse(P(array("f4", "<", {2}, false, "abc")).stop(), block), ErrorCode::kForbidden, std::nullopt,
               "BUILD on numpy array: the data length does not match");
  expect_error(parse(P(array("f4", "<", {INT64_MAX, 4}, false, "abc")).stop(), block), ErrorCode::kForbidden,
               std::nullopt, "the data length does not match");
  expect_error(parse(P(array("b1", "<", {1}, false, "a")).stop(), block), ErrorCode::kForbidden, std::nullopt,
               "BUILD on numpy dtype");
  expect_error(parse(P(array("f4", "|", {1}, false, "abcd")).stop(), block), ErrorCode::kForbidden, std::nullopt,
               "BUILD on numpy dtype");
  // Object, string and structured dtypes are findings.
  for (const char* typestr : {"O8", "U3", "S3", "V4", "f3"}) {
    expect_error(parse(P().dtype(typestr, "|").stop(), block), ErrorCode::kForbidden, std::nullopt,
                 "REDUCE numpy.dtype: dtype '");
  }
  // numpy 2 spells the modules numpy._core.
  EXPECT_EQ(outcome(P().proto(2)
                        .g("numpy._core.multiarray", "scalar")
                        .dtype("f4", "<")
                        .b(std::string("\x00\x00\xc0?", 4))
                        .op(Op::kTuple2)
                        .op(Op::kReduce)
                        .stop()),
            "scalar(dtype('<f4'), 0000c03f)");
  EXPECT_NE(
      call_finding(P().g("numpy.core.multiarray", "scalar").dtype("f4", "<").b("abc").op(Op::kTuple2).op(Op::kReduce))
          .find("not one element"),
      std::string::npos);
  // A dtype without its BUILD is not finished.
  EXPECT_NE(call_finding(P().g("numpy.core.multiarray", "scalar")
                             .g("numpy", "dtype")
                             .s("f4")
                             .boolean(false)
                             .boolean(true)
                             .op(Op::kTuple3)
                             .op(Op::kReduce)
                             .b("abcd")
                             .op(Op::kTuple2)
                             .op(Op::kReduce))
                .find("expects (dtype, bytes)"),
            std::string::npos);
  // Protocol 5: _frombuffer(bytearray or bytes, dtype, shape, 'C' or 'F').
  EXPECT_EQ(outcome(P().proto(5)
                        .g("numpy.core.numeric", "_frombuffer")
                        .mark()
                        .op(Op::kByteArray8)
                        .le(4, 8)
                        .raw("abcd")
                        .dtype("u1", "|")
                        .ints({2, 2})
                        .s("F")
                        .op(Op::kTuple)
                        .op(Op::kReduce)
                        .stop()),
            "ndarray(dtype('|u1'), (2, 2), F, 61626364)");
  EXPECT_NE(call_finding(P().g("numpy._core.numeric", "_frombuffer")
                             .mark()
                             .b("abc")
                             .dtype("u1", "|")
                             .ints({2, 2})
                             .s("C")
                             .op(Op::kTuple)
                             .op(Op::kReduce))
                .find("data length"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("numpy.core.numeric", "_frombuffer")
                             .mark()
                             .b("abcd")
                             .dtype("u1", "|")
                             .ints({4})
                             .s("K")
                             .op(Op::kTuple)
                             .op(Op::kReduce))
                .find("'C' or 'F'"),
            std::string::npos);
  EXPECT_NE(call_finding(P().g("numpy.core.multiarray", "_reconstruct")
                             .g("numpy", "ndarray")
                             .ints({1})
                             .b("b")
                             .op(Op::kTuple3)
                             .op(Op::kReduce))
                .find("(numpy.ndarray, (0,), b'b')"),
            std::string::npos);
  // Datetime units come with version 4 of the dtype state.
  auto datetime = [](std::string_view unit, int64_t count) {
    P p;
    p.g("numpy", "dtype").s("M8").boolean(false).boolean(true).op(Op::kTuple3).op(Op::kReduce);
    p.mark()
        .i(4)
        .s("<")
        .none()
        .none()
        .none()
        .i(-1)
        .i(-1)
        .i(0)
        .op(Op::kEmptyDict)
        .mark()
        .b(unit)
        .i(count)
        .i(1)
        .i(1)
        .op(Op::kTuple)
        .op(Op::kTuple2)
        .op(Op::kTuple)
        .op(Op::kBuild);
    return p.stop();
  };
  EXPECT_EQ(outcome(datetime("ns", 1)), "dtype('<M8[ns]')");
  EXPECT_EQ(outcome(datetime("ms", 10)), "dtype('<M8[10ms]')");
  EXPECT_EQ(outcome(datetime("generic", 1)), "dtype('<M8')");
  expect_error(parse(datetime("fortnight", 1), block), ErrorCode::kForbidden, std::nullopt, "datetime unit");
  expect_error(parse(datetime("ns", 0), block), ErrorCode::kForbidden, std::nullopt, "datetime unit");
}

TEST(PickleVmAllowlist, BuiltinsCodecsAndNamespace) {
  EXPECT_EQ(outcome("cbuiltins\nset\n((K\x01K\x02K\x01ltR."), "set{1, 2}");
  EXPECT_EQ(outcome("cbuiltins\nfrozenset\n((ltR."), "frozenset{}");
  EXPECT_NE(
      call_finding(P().g("builtins", "set").mark().op(Op::kEmptyList).op(Op::kList).op(Op::kTuple1).op(Op::kReduce))
          .find("not hashable"),
      std::string::npos);
  EXPECT_NE(call_finding(P().g("builtins", "set").op(Op::kEmptyTuple).op(Op::kReduce)).find("expects one list"),
            std::string::npos);
  expect_error(parse(bytes_of("c_codecs\nencode\n(V\\u20ac\nVlatin1\ntR."), with_actions(Action::kBlock)),
               ErrorCode::kForbidden, 34, "REDUCE _codecs.encode: the text is not Latin-1");
  EXPECT_EQ(outcome("c_codecs\nencode\n(V\xe9\x01\nVlatin1\ntR."), "b'\\xe9\\x01'");
  EXPECT_EQ(outcome("c_codecs\nencode\n(Vab\nVlatin-1\ntR."), "b'ab'");
  EXPECT_NE(call_finding(P().g("_codecs", "encode").s("a").s("utf-8").op(Op::kTuple2).op(Op::kReduce))
                .find("expects (str, 'latin1')"),
            std::string::npos);
  EXPECT_EQ(outcome("cbuiltins\nbytes\n)R."), "b''");
  EXPECT_NE(
      call_finding(P().g("builtins", "bytes").s("a").op(Op::kTuple1).op(Op::kReduce)).find("expects no arguments"),
      std::string::npos);
  EXPECT_EQ(outcome("cbuiltins\nbytearray\n)R."), "bytearray(b'')");
  EXPECT_EQ(outcome(P().g("builtins", "bytearray").b("xy").op(Op::kTuple1).op(Op::kReduce).stop()), "bytearray(b'xy')");
  EXPECT_EQ(outcome(P().g("builtins", "bytearray").s("\xc3\xbf").s("latin-1").op(Op::kTuple2).op(Op::kReduce).stop()),
            "bytearray(b'\\xff')");
  // argparse.Namespace: NEWOBJ + BUILD (protocol 2+), copyreg._reconstructor + BUILD (protocol 0/1).
  EXPECT_EQ(outcome(P().proto(2)
                        .g("argparse", "Namespace")
                        .op(Op::kEmptyTuple)
                        .op(Op::kNewObj)
                        .mark()
                        .s("lr")
                        .raw("G\x3f\xb9\x99\x99\x99\x99\x99\x9a")
                        .s("name")
                        .s("x")
                        .op(Op::kDict)
                        .op(Op::kBuild)
                        .stop()),
            "Namespace{'lr': float(3fb999999999999a), 'name': 'x'}");
  EXPECT_EQ(outcome("ccopy_reg\n_reconstructor\n(cargparse\nNamespace\nc__builtin__\nobject\nNtR(dVa\nI1\nsb."),
            "Namespace{'a': 1}");
  const Policy block = with_actions(Action::kBlock);
  expect_error(
      parse(bytes_of("ccopyreg\n_reconstructor\n(cargparse\nNamespace\nccollections\nOrderedDict\nNtR."), block),
      ErrorCode::kForbidden, std::nullopt, "expects (argparse.Namespace, builtins.object, None)");
  expect_error(parse(P().g("argparse", "Namespace").s("a").op(Op::kTuple1).op(Op::kNewObj).stop(), block),
               ErrorCode::kForbidden, std::nullopt, "expects no arguments");
  expect_error(parse(P().g("argparse", "Namespace")
                         .op(Op::kEmptyTuple)
                         .op(Op::kNewObj)
                         .mark()
                         .i(1)
                         .i(2)
                         .op(Op::kDict)
                         .op(Op::kBuild)
                         .stop(),
                     block),
               ErrorCode::kForbidden, std::nullopt,
               "BUILD on argparse.Namespace: the state must be a dict with str keys");
  expect_error(parse(P().g("numpy", "ndarray").op(Op::kEmptyTuple).op(Op::kReduce).stop(), block),
               ErrorCode::kForbidden, std::nullopt, "REDUCE numpy.ndarray: is not callable");
}

TEST(PickleVmAllowlist, OperatorAllowedPairs) {
  Policy policy = with_actions(Action::kBlock);
  policy.operator_allowed_globals.push_back(GlobalName{"mylib.layers", "Config"});
  policy.operator_allowed_globals.push_back(GlobalName{"torch", "Tensor.add_"});
  EXPECT_EQ(outcome(P().g("mylib.layers", "Config").i(1).s("a").op(Op::kTuple2).op(Op::kReduce).stop(), policy),
            "call(mylib.layers.Config, (1, 'a'))");
  EXPECT_EQ(outcome(P().proto(2)
                        .g("mylib.layers", "Config")
                        .op(Op::kEmptyTuple)
                        .op(Op::kNewObj)
                        .mark()
                        .s("k")
                        .i(1)
                        .op(Op::kDict)
                        .op(Op::kBuild)
                        .stop(),
                    policy),
            "call(mylib.layers.Config, (), new, state={'k': 1})");
  EXPECT_EQ(outcome("(cmylib.layers\nConfig\nctorch\nTensor.add_\nl.", policy),
            "[mylib.layers.Config, torch.Tensor.add_]");
  // Listed exactly means exactly: neighbours stay forbidden.
  expect_error(parse(bytes_of("cmylib.layers\nConfig2\n."), policy), ErrorCode::kForbidden, 0,
               "GLOBAL mylib.layers.Config2");
  expect_error(parse(bytes_of("cmylib\nlayers.Config\n."), policy), ErrorCode::kForbidden, 0,
               "GLOBAL mylib.layers.Config");
  // Arguments still may not carry callables.
  expect_error(
      parse(P().g("mylib.layers", "Config").g("collections", "OrderedDict").op(Op::kTuple1).op(Op::kReduce).stop(),
            policy),
      ErrorCode::kForbidden, std::nullopt, "REDUCE of global collections.OrderedDict");
  expect_error(parse(P().g("mylib.layers", "Config")
                         .op(Op::kEmptyTuple)
                         .op(Op::kReduce)
                         .op(Op::kEmptyDict)
                         .op(Op::kBuild)
                         .op(Op::kEmptyDict)
                         .op(Op::kBuild)
                         .stop(),
                     policy),
               ErrorCode::kForbidden, std::nullopt, "already built once");
}

// ---------------------------------------------------------------------------------------------
// Real pickles from Debian's Python (torch 1.13, numpy 1.24), compared with the objects they hold

// Prints "SAMPLE <name> <mode> <hex> <canonical text>" per pickle; the canonical text is the form
// Renderer prints. Modes: plain (a pickle.dumps), archive (data.pkl of a torch.save zip), evil (a
// payload inside a dict: the expected text is what remains once it is disarmed), legacy (a whole
// legacy torch.save file).
constexpr std::string_view kSampleScript = R"PY(
import argparse, collections, io, os, pickle, struct, zipfile
import numpy, torch

def esc(data):
    return ''.join(chr(b) if 0x20 <= b < 0x7f and b not in (0x27, 0x5c) else '\\x%02x' % b for b in data)

def tup(items):
    return '(' + ', '.join(items) + ')'

def pairs(items):
    return ', '.join(canon(k) + ': ' + canon(v) for k, v in items)

def tensor(t):
    s = t.storage()
    return 'Tensor(Storage(%s, %r, %d), %d, %s, %s, %s)' % (
        s.pickle_storage_type(), 'cpu', s.size(), t.storage_offset(), tup(map(str, t.shape)),
        tup(map(str, t.stride())), canon(t.requires_grad))

def canon(x):
    if x is None: return 'None'
    if x is True: return 'True'
    if x is False: return 'False'
    if type(x) is int: return str(x)
    if type(x) is float: return 'float(' + struct.pack('>d', x).hex() + ')'
    if type(x) is str: return "'" + esc(x.encode('utf-8', 'surrogatepass')) + "'"
    if type(x) is bytes: return "b'" + esc(x) + "'"
    if type(x) is bytearray: return "bytearray(b'" + esc(bytes(x)) + "')"
    if type(x) is torch.Size: return 'Size' + tup(map(str, x))
    if type(x) is tuple: return tup(canon(i) for i in x)
    if type(x) is list: return '[' + ', '.join(canon(i) for i in x) + ']'
    if type(x) is collections.OrderedDict:
        text = 'OrderedDict{' + pairs(x.items()) + '}'
        return text + ('@{' + pairs(vars(x).items()) + '}' if vars(x) else '')
    if type(x) is dict: return '{' + pairs(x.items()) + '}'
    if type(x) is set: return 'set{' + ', '.join(sorted(canon(i) for i in x)) + '}'
    if type(x) is frozenset: return 'frozenset{' + ', '.join(sorted(canon(i) for i in x)) + '}'
    if type(x) is argparse.Namespace: return 'Namespace{' + pairs(vars(x).items()) + '}'
    if type(x) is torch.nn.Parameter: return 'Parameter(' + tensor(x.data) + ', ' + canon(x.requires_grad) + ')'
    if type(x) is torch.Tensor: return tensor(x)
    if isinstance(x, torch.dtype): return str(x)
    if isinstance(x, numpy.dtype): return "dtype('%s')" % x.str
    if type(x) is numpy.ndarray:
        fortran = x.flags.f_contiguous and not x.flags.c_contiguous
        return "ndarray(dtype('%s'), %s, %s, %s)" % (x.dtype.str, tup(map(str, x.shape)), 'F' if fortran else 'C',
                                                    x.tobytes(order='F' if fortran else 'C').hex())
    if isinstance(x, numpy.generic): return "scalar(dtype('%s'), %s)" % (x.dtype.str, x.tobytes().hex())
    raise TypeError(type(x))

def emit(name, mode, data, text):
    print('SAMPLE', name, mode, bytes(data).hex(), text)

shared = [1, 2]
readonly = numpy.arange(4, dtype=numpy.int32)
readonly.setflags(write=False)
plain = {
    'scalars': [None, True, False, 0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**31, 2**63 - 1, -2**63,
                2**63, -2**63 - 1, 2**64, 2**200, -2**200, 0.0, -0.0, 1.5, 0.1, 1e300, -1e-300,
                float('inf'), float('-inf'), float('nan')],
    'strings': ['', 'a', 'h\u00e9llo', '\u65e5\u672c', '\ud800', "a\nb\\c'\"", '\x00\x1a\r', '\U0001f600', 'x' * 300],
    'bytes': [b'', b'abc', bytes(range(256)), bytearray(b'xy'), bytearray()],
    'tuples': [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((1, (2,)), ((),))],
    'lists': [[], [1, 'a'], list(range(2500)), [shared, shared]],
    'dicts': [{}, {'a': 1, 2: [3], (4, 'b'): None, 1.5: b'x'}, {i: str(i) for i in range(2500)}],
    'sets': [set(), {1, 2, 3}, frozenset({'a'}), frozenset(), {(1, 2), 'x', b'y', None}],
    'ordered': collections.OrderedDict([('b', 1), ('a', [2])]),
    'namespace': argparse.Namespace(lr=0.1, name='x', layers=[1, 2], nested={'k': (1, 2)}),
    'numpy': [numpy.arange(3.0), numpy.arange(6, dtype=numpy.int16).reshape(2, 3).T, numpy.array([True, False]),
              numpy.array([1.5], dtype=numpy.float16), numpy.array([1 + 2j], dtype=numpy.complex64),
              numpy.array(['2020-01-01T00:00:00'], dtype='datetime64[ns]'),
              numpy.array([5, 7], dtype='timedelta64[s]'), numpy.zeros((0,), dtype=numpy.float32),
              numpy.array(5), numpy.arange(4, dtype='>i4'), numpy.arange(10.0)[::3], readonly,
              numpy.float32(1.5), numpy.int64(7), numpy.bool_(True), numpy.complex128(1j),
              numpy.dtype('>i4'), numpy.dtype('M8[10ms]'), numpy.dtype('u8')],
}
od = collections.OrderedDict([('x', 1)])
od.extra = {'v': 2}
plain['ordered_attrs'] = od
for name, value in plain.items():
    for protocol in range(6):
        data = pickle.dumps(value, protocol=protocol)
        # numpy restores big-endian arrays (below protocol 5) and scalars in native order: the VM must
        # give what numpy loads, not what was dumped.
        emit('%s-p%d' % (name, protocol), 'plain', data, canon(pickle.loads(data) if name == 'numpy' else value))

class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))
for protocol in range(6):
    emit('evil-p%d' % protocol, 'evil', pickle.dumps({'a': 1, 'evil': Evil(), 'b': [Evil(), 2]}, protocol=protocol),
         "{'a': 1, 'b': [2]}")

base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
checkpoints = {
    'linear': torch.nn.Linear(3, 2).state_dict(),
    'mixed': {'p': torch.nn.Parameter(torch.ones(2)), 'base': base, 'view': base[:, 1], 'T': base.T,
              'size': torch.Size([2, 3]), 'dtype': torch.float16, 'bf16': torch.ones(3, dtype=torch.bfloat16),
              'long': torch.tensor([1, 2], dtype=torch.int64), 'bool': torch.tensor([True]),
              'scalar': torch.tensor(3.0), 'empty': torch.zeros(0, 3), 'step': 7, 'names': ['a', 'b']},
    'frozen': {'p': torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)},
}
for name, value in checkpoints.items():
    for protocol in (2, 4, 5):
        buffer = io.BytesIO()
        torch.save(value, buffer, pickle_protocol=protocol)
        archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
        data = next(archive.read(n) for n in archive.namelist() if n.endswith('/data.pkl'))
        emit('%s-p%d' % (name, protocol), 'archive', data, canon(value))

buffer = io.BytesIO()
torch.save(checkpoints['mixed'], buffer, _use_new_zipfile_serialization=False)
emit('legacy', 'legacy', buffer.getvalue(), canon(checkpoints['mixed']))
)PY";

struct PythonSample {
  std::string name;
  std::string mode;
  std::vector<uint8_t> data;
  std::string canonical;
};

// Runs the sample script once per test binary.
const std::vector<PythonSample>& python_samples(std::string& failure) {
  static std::string script_failure;
  static const std::vector<PythonSample> samples = [] {
    std::vector<PythonSample> made;
    const testing::PythonRun run = testing::run_python(kSampleScript);
    if (run.exit_code != 0) {
      script_failure = "sample script failed (exit " + std::to_string(run.exit_code) + "):\n" + run.output;
      return made;
    }
    std::istringstream lines(run.output);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string tag, hex;
      PythonSample sample;
      if (!(fields >> tag >> sample.name >> sample.mode >> hex) || tag != "SAMPLE") continue;
      std::getline(fields >> std::ws, sample.canonical);
      auto data = from_hex(hex);
      if (!data) continue;
      sample.data = std::move(*data);
      made.push_back(std::move(sample));
    }
    return made;
  }();
  failure = script_failure;
  return samples;
}

TEST(PickleVmPython, RealPicklesParseToTheObjectsTheyHold) {
  std::string failure;
  const auto& samples = python_samples(failure);
  ASSERT_TRUE(failure.empty()) << failure;
  ASSERT_GE(samples.size(), 80u);
  size_t checked = 0;
  for (const auto& sample : samples) {
    if (sample.mode == "legacy") continue;
    PickleParseOptions options;
    options.record_name = sample.name;
    if (sample.mode == "archive") options.persistent_ids = PersistentIdMode::kTorchArchive;
    auto result = parse(sample.data, Policy{}, options);
    ASSERT_TRUE(result) << sample.name << ": " << result.error().describe();
    EXPECT_EQ(render(*result), sample.canonical) << sample.name;
    if (sample.mode == "evil") {
      // The second payload reuses the memoized (poisoned) global: one finding per GLOBAL opcode.
      ASSERT_EQ(result->findings.size(), 1u) << sample.name;
      for (const auto& finding : result->findings) {
        EXPECT_EQ(finding.kind, FindingKind::kForbiddenGlobal) << sample.name;
        EXPECT_NE(finding.construct.find("GLOBAL posix.system"), std::string::npos) << finding.construct;
        EXPECT_EQ(finding.record, sample.name);
      }
      EXPECT_EQ(result->globals_seen, (std::vector<GlobalName>{{"posix", "system"}})) << sample.name;
      auto blocked = parse(sample.data, with_actions(Action::kBlock), options);
      ASSERT_FALSE(blocked) << sample.name;
      EXPECT_EQ(blocked.error().code, ErrorCode::kForbidden);
    } else {
      EXPECT_TRUE(result->findings.empty()) << sample.name << ": " << result->findings[0].construct;
    }
    EXPECT_EQ(result->end_offset, sample.data.size());
    ++checked;
  }
  EXPECT_EQ(checked, samples.size() - 1);
}

TEST(PickleVmPython, TorchArchivesShareStoragesAndRecordTheirGlobals) {
  std::string failure;
  const auto& samples = python_samples(failure);
  ASSERT_TRUE(failure.empty()) << failure;
  auto mixed = std::find_if(samples.begin(), samples.end(), [](const auto& s) { return s.name == "mixed-p2"; });
  ASSERT_NE(mixed, samples.end());
  auto result = parse(mixed->data, Policy{}, archive_options());
  ASSERT_TRUE(result) << result.error().describe();
  // 'base', 'view' and 'T' are views of one storage: one node.
  const auto& dict = std::get<DictValue>(result->tree.at(result->tree.root));
  std::map<std::string, NodeId> storage_of;
  for (const auto& [key, value] : dict.items) {
    if (const auto* tensor = std::get_if<TensorValue>(&result->tree.at(value))) {
      storage_of[std::get<StrValue>(result->tree.at(key)).utf8] = tensor->storage;
    }
  }
  EXPECT_EQ(storage_of.at("base"), storage_of.at("view"));
  EXPECT_EQ(storage_of.at("base"), storage_of.at("T"));
  EXPECT_NE(storage_of.at("base"), storage_of.at("long"));
  std::set<std::string> globals;
  for (const auto& name : result->globals_seen) globals.insert(name.module + "." + name.name);
  EXPECT_EQ(globals,
            (std::set<std::string>{"torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
                                   "torch.FloatStorage", "collections.OrderedDict", "torch.Size", "torch.float16",
                                   "torch.BFloat16Storage", "torch.LongStorage", "torch.BoolStorage"}));
  // Without the archive mode, every storage reference is a finding (blocked by default).
  expect_error(parse(mixed->data), ErrorCode::kForbidden, std::nullopt, "forbidden_persistent_id");
}

TEST(PickleVmPython, LegacyFilesAreStackedPickles) {
  std::string failure;
  const auto& samples = python_samples(failure);
  ASSERT_TRUE(failure.empty()) << failure;
  auto legacy = std::find_if(samples.begin(), samples.end(), [](const auto& s) { return s.mode == "legacy"; });
  ASSERT_NE(legacy, samples.end());
  MemorySource file(legacy->data);
  uint64_t offset = 0;
  std::vector<std::string> parts;
  for (int part = 0; part < 5; ++part) {
    SubSource rest(file, offset, file.size() - offset);
    PickleParseOptions options;
    options.allow_trailing_bytes = true;
    options.persistent_ids = part == 3 ? PersistentIdMode::kTorchLegacy : PersistentIdMode::kNone;
    auto result = parse_pickle(rest, Policy{}, options);
    ASSERT_TRUE(result) << "part " << part << ": " << result.error().describe();
    expect_only_reachable_nodes(result->tree);
    parts.push_back(render(*result));
    offset += result->end_offset;
  }
  EXPECT_EQ(parts[0], "119547037146038801333356");  // the legacy magic number
  EXPECT_EQ(parts[1], "1001");                      // protocol version
  EXPECT_EQ(parts[3], legacy->canonical);
  EXPECT_EQ(parts[4].front(), '[');  // the storage keys, raw storage data follows
  EXPECT_LT(offset, file.size());
}

}  // namespace
}  // namespace zoogate::cdr
