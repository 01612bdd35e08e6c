#include "cdr/pickle_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "tests/cdr/python_runner.h"

namespace zoogate::cdr {
namespace {

using ::testing::HasSubstr;
using zoogate::testing::run_python;

// --- a tiny pickle assembler for golden bytes ---

std::string op(int opcode) { return std::string(1, static_cast<char>(opcode)); }

std::string le(uint64_t value, int width) {
  std::string out;
  for (int i = 0; i < width; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
  return out;
}

const std::string kHeader = op(0x80) + op(2);
const std::string kStop = op('.');
const std::string kMark = op('(');
const std::string kEmptyList = op(']');
const std::string kEmptyDict = op('}');
const std::string kEmptyTuple = op(')');
const std::string kAppends = op('e');
const std::string kSetItems = op('u');
const std::string kReduce = op('R');
const std::string kTuple2 = op(0x86);

std::string binint1(int value) { return op('K') + le(static_cast<uint64_t>(value), 1); }
std::string unicode(std::string_view text) { return op('X') + le(text.size(), 4) + std::string(text); }
std::string global(std::string_view module, std::string_view name) {
  return op('c') + std::string(module) + "\n" + std::string(name) + "\n";
}
std::string put(int index) { return op('q') + le(static_cast<uint64_t>(index), 1); }
std::string get(int index) { return op('h') + le(static_cast<uint64_t>(index), 1); }

// --- building trees ---

NodeId integer(ValueTree& tree, int64_t value) { return tree.add(IntValue{value, {}}); }
NodeId text(ValueTree& tree, std::string value) { return tree.add(StrValue{std::move(value)}); }
NodeId bytes(ValueTree& tree, std::string data, bool is_bytearray = false) {
  return tree.add(BytesValue{std::move(data), is_bytearray});
}
NodeId list(ValueTree& tree, std::vector<NodeId> items) { return tree.add(ListValue{std::move(items)}); }
NodeId tuple(ValueTree& tree, std::vector<NodeId> items) { return tree.add(TupleValue{std::move(items)}); }

ValueTree rooted(ValueTree tree, NodeId root) {
  tree.root = root;
  return tree;
}

std::string write(const ValueTree& tree, PickleWriteOptions options = {}) {
  MemorySink sink;
  auto status = write_pickle(tree, options, sink);
  EXPECT_TRUE(status) << status.error().describe();
  const auto& out = sink.bytes();
  return std::string(out.begin(), out.end());
}

Error write_error(const ValueTree& tree, PickleWriteOptions options = {}) {
  MemorySink sink;
  auto status = write_pickle(tree, options, sink);
  EXPECT_FALSE(status);
  return status ? Error{} : status.error();
}

// Loads `pickle` with CPython's pickle module and runs `checks`, Python statements about `value`.
void expect_python_loads(const std::string& pickle, const std::string& checks) {
  const std::string script =
      "import sys, pickle, collections, argparse, types\n"
      "value = pickle.load(open(sys.argv[1] + '/value.pkl', 'rb'))\n" +
      checks + "\nprint('OK')\n";
  auto run = run_python(script, {{"value.pkl", pickle}});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("OK"));
}

// --- golden bytes ---

TEST(PickleWriter, WritesScalarsWithTheShortestOpcodes) {
  ValueTree tree;
  NodeId root = list(
      tree, {tree.add(NoneValue{}), tree.add(true), tree.add(false), integer(tree, 0), integer(tree, 255),
             integer(tree, 256), integer(tree, 65535), integer(tree, 65536), integer(tree, -1),
             integer(tree, std::numeric_limits<int32_t>::min()), integer(tree, int64_t{1} << 31),
             integer(tree, std::numeric_limits<int64_t>::min()), tree.add(FloatValue{1.5}), text(tree, "\xc3\xa9")});
  const std::string pickle = write(rooted(tree, root));
  const std::string expected = kHeader + kEmptyList + kMark + op('N') + op(0x88) + op(0x89) + binint1(0) +
                               binint1(255) + op('M') + le(256, 2) + op('M') + le(65535, 2) + op('J') + le(65536, 4) +
                               op('J') + le(0xffffffff, 4) + op('J') + le(0x80000000, 4) + op(0x8a) + op(5) +
                               le(0x80000000, 5) + op(0x8a) + op(8) + le(uint64_t{1} << 63, 8) + op('G') + op(0x3f) +
                               op(0xf8) + std::string(6, '\0') + unicode("\xc3\xa9") + kAppends + kStop;
  EXPECT_EQ(pickle, expected);
  expect_python_loads(pickle,
                      "assert value == [None, True, False, 0, 255, 256, 65535, 65536, -1, -2**31, 2**31, -2**63,"
                      " 1.5, '\\u00e9'], value");
}

TEST(PickleWriter, IntegersBeyondInt64UseLong1AndLong4) {
  ValueTree tree;
  std::string two_to_64 = std::string(8, '\0') + "\x01";
  std::string huge = std::string(299, '\0') + "\x40";    // 2^(8*299+6): 300 bytes, so LONG4
  std::string negative = std::string(8, '\0') + "\x80";  // -2^71
  NodeId root =
      list(tree, {tree.add(IntValue{0, two_to_64}), tree.add(IntValue{0, huge}), tree.add(IntValue{0, negative})});
  const std::string pickle = write(rooted(tree, root));
  EXPECT_EQ(pickle, kHeader + kEmptyList + kMark + op(0x8a) + op(9) + two_to_64 + op(0x8b) + le(300, 4) + huge +
                        op(0x8a) + op(9) + negative + kAppends + kStop);
  expect_python_loads(pickle, "assert value == [2**64, 2**(8*299+6), -2**71], value");
}

TEST(PickleWriter, SharedNodesAreMemoizedOnceInFirstUseOrder) {
  ValueTree tree;
  NodeId shared_text = text(tree, "ab");
  NodeId shared_list = list(tree, {});
  NodeId root = tuple(tree, {shared_text, shared_list, shared_text, shared_list});
  const std::string pickle = write(rooted(tree, root));
  EXPECT_EQ(pickle, kHeader + kMark + unicode("ab") + put(0) + kEmptyList + put(1) + get(0) + get(1) + op('t') + kStop);
  expect_python_loads(pickle,
                      "assert value == ('ab', [], 'ab', [])\nassert value[0] is value[2] and value[1] is value[3]");
}

TEST(PickleWriter, PythonSingletonsAreWrittenAgainInsteadOfMemoized) {
  ValueTree tree;
  NodeId none = tree.add(NoneValue{});
  NodeId truth = tree.add(true);
  NodeId empty = tuple(tree, {});
  NodeId root = list(tree, {none, truth, empty, none, truth, empty});
  const std::string pickle = write(rooted(tree, root));
  EXPECT_EQ(pickle, kHeader + kEmptyList + kMark + op('N') + op(0x88) + kEmptyTuple + op('N') + op(0x88) + kEmptyTuple +
                        kAppends + kStop);
  expect_python_loads(pickle, "assert value == [None, True, (), None, True, ()] and value[2] is value[5]");
}

TEST(PickleWriter, CyclesThroughListsAndDictsAreWritten) {
  ValueTree tree;
  NodeId outer = list(tree, {});
  NodeId dict = tree.add(DictValue{});
  std::get<ListValue>(tree.at(outer)).items = {outer, dict};
  std::get<DictValue>(tree.at(dict)).items = {{text(tree, "self"), dict}, {text(tree, "l"), outer}};
  const std::string pickle = write(rooted(tree, outer));
  EXPECT_EQ(pickle, kHeader + kEmptyList + put(0) + kMark + get(0) + kEmptyDict + put(1) + kMark + unicode("self") +
                        get(1) + unicode("l") + get(0) + kSetItems + kAppends + kStop);
  expect_python_loads(pickle,
                      "assert value[0] is value and value[1]['self'] is value[1] and value[1]['l'] is value\n"
                      "assert list(value[1]) == ['self', 'l']");
}

TEST(PickleWriter, BytesAreWrittenAsCPythonDoesAndRepeatedAtomsAreMemoized) {
  ValueTree tree;
  NodeId root =
      list(tree, {bytes(tree, std::string("\0\xff", 2)), bytes(tree, "a"), bytes(tree, ""), bytes(tree, "\x80", true)});
  const std::string pickle = write(rooted(tree, root));
  const std::string encode = global("_codecs", "encode");
  EXPECT_EQ(pickle, kHeader + kEmptyList + kMark +                                                                //
                        encode + unicode(std::string("\0\xc3\xbf", 3)) + unicode("latin1") + kTuple2 + kReduce +  //
                        encode + put(0) + unicode("a") + unicode("latin1") + put(1) + kTuple2 + kReduce +         //
                        get(0) + unicode("") + get(1) + kTuple2 + kReduce +                                       //
                        global("builtins", "bytearray") + unicode("\xc2\x80") + unicode("latin-1") + kTuple2 + kReduce +
                        kAppends + kStop);
  expect_python_loads(pickle,
                      "assert value == [b'\\x00\\xff', b'a', b'', bytearray(b'\\x80')], value\n"
                      "assert type(value[3]) is bytearray");
}

TEST(PickleWriter, NumpyDtypeMatchesNumpysOwnPickle) {
  ValueTree tree;
  tree.root = tree.add(NumpyDtypeValue{"<f4"});
  EXPECT_EQ(write(tree), kHeader + global("numpy", "dtype") + unicode("f4") + op(0x89) + op(0x88) + op(0x87) + kReduce +
                             kMark + binint1(3) + unicode("<") + op('N') + op('N') + op('N') + op('J') +
                             le(0xffffffff, 4) + op('J') + le(0xffffffff, 4) + binint1(0) + op('t') + op('b') + kStop);
}

// --- what CPython and numpy load ---

TEST(PickleWriter, TuplesListsAndBatchesLoadInCPython) {
  ValueTree tree;
  std::vector<NodeId> tuples;
  for (int size = 0; size <= 5; ++size) {
    std::vector<NodeId> items;
    for (int i = 0; i < size; ++i) items.push_back(integer(tree, i));
    tuples.push_back(tuple(tree, items));
  }
  std::vector<NodeId> long_list;
  for (int i = 0; i < 2500; ++i) long_list.push_back(integer(tree, i));
  DictValue dict;
  for (int i = 0; i < 1001; ++i) dict.items.emplace_back(integer(tree, i), text(tree, std::to_string(i)));
  NodeId root = list(tree, {list(tree, tuples), list(tree, long_list), tree.add(std::move(dict))});
  const std::string pickle = write(rooted(tree, root));
  expect_python_loads(pickle,
                      "assert value[0] == [(), (0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4)]\n"
                      "assert value[1] == list(range(2500))\n"
                      "assert value[2] == {i: str(i) for i in range(1001)}\n"
                      "import pickletools, collections\n"
                      "ops = collections.Counter(o.name for o, _, _ in pickletools.genops(open(sys.argv[1] + "
                      "'/value.pkl', 'rb').read()))\n"
                      "assert ops['APPENDS'] == 5 and ops['SETITEMS'] == 1 and ops['SETITEM'] == 1, ops\n"
                      "assert ops['TUPLE1'] == 1 and ops['TUPLE2'] == 1 and ops['TUPLE3'] == 1, ops\n"
                      "assert ops['TUPLE'] == 2 and ops['EMPTY_TUPLE'] == 1, ops");
}

TEST(PickleWriter, ManyMemoEntriesUseLongBinputAndLongBinget) {
  ValueTree tree;
  std::vector<NodeId> items;
  for (int i = 0; i < 300; ++i) {
    NodeId shared = text(tree, "s" + std::to_string(i));
    items.push_back(tuple(tree, {shared, shared}));
  }
  const std::string pickle = write(rooted(tree, list(tree, items)));
  expect_python_loads(pickle,
                      "assert value == [('s%d' % i, 's%d' % i) for i in range(300)]\n"
                      "assert all(a is b for a, b in value)\n"
                      "import pickletools\n"
                      "ops = [(o.name, arg) for o, arg, _ in pickletools.genops(open(sys.argv[1] + '/value.pkl', "
                      "'rb').read())]\n"
                      "puts = [arg for name, arg in ops if name.endswith('PUT')]\n"
                      "assert puts == list(range(300)), puts\n"
                      "assert ('LONG_BINPUT', 256) in ops and ('LONG_BINGET', 299) in ops");
}

TEST(PickleWriter, SetsOrderedDictsAndNamespacesLoadInCPython) {
  ValueTree tree;
  NodeId set = tree.add(SetValue{{integer(tree, 1), text(tree, "x")}, false});
  NodeId frozen = tree.add(SetValue{{integer(tree, 2)}, true});
  NodeId empty_set = tree.add(SetValue{{}, false});
  NodeId metadata = tree.add(DictValue{{{text(tree, "version"), integer(tree, 1)}}});
  NodeId attributes =
      tree.add(DictValue{{{text(tree, "_metadata"), tree.add(DictValue{{{text(tree, ""), metadata}}})}}});
  NodeId ordered = tree.add(
      OrderedDictValue{{{text(tree, "b"), integer(tree, 1)}, {text(tree, "a"), integer(tree, 2)}}, attributes});
  NodeId plain_ordered = tree.add(OrderedDictValue{});
  NodeId ns = tree.add(NamespaceValue{});
  std::get<NamespaceValue>(tree.at(ns)).attributes = {{text(tree, "lr"), tree.add(FloatValue{0.5})},
                                                      {text(tree, "me"), ns}};
  NodeId empty_ns = tree.add(NamespaceValue{});
  NodeId root = list(tree, {set, frozen, empty_set, ordered, plain_ordered, ns, empty_ns});
  const std::string pickle = write(rooted(tree, root));
  expect_python_loads(pickle,
                      "s, f, e, od, plain, ns, empty = value\n"
                      "assert type(s) is set and s == {1, 'x'}\n"
                      "assert type(f) is frozenset and f == frozenset({2})\n"
                      "assert type(e) is set and not e\n"
                      "assert type(od) is collections.OrderedDict and list(od.items()) == [('b', 1), ('a', 2)]\n"
                      "assert od._metadata == {'': {'version': 1}}\n"
                      "assert type(plain) is collections.OrderedDict and not plain and not vars(plain)\n"
                      "assert type(ns) is argparse.Namespace and ns.lr == 0.5 and ns.me is ns\n"
                      "assert type(empty) is argparse.Namespace and vars(empty) == {}");
}

TEST(PickleWriter, OperatorCallsUseReduceOrNewobjAndBuild) {
  ValueTree tree;
  NodeId complex_call =
      tree.add(OperatorCallValue{tree.add(GlobalValue{"builtins", "complex"}),
                                 tuple(tree, {tree.add(FloatValue{1}), tree.add(FloatValue{2})}), false, std::nullopt});
  NodeId state = tree.add(DictValue{});
  NodeId object =
      tree.add(OperatorCallValue{tree.add(GlobalValue{"types", "SimpleNamespace"}), tuple(tree, {}), true, state});
  std::get<DictValue>(tree.at(state)).items = {{text(tree, "a"), integer(tree, 1)}, {text(tree, "me"), object}};
  const std::string pickle = write(rooted(tree, list(tree, {complex_call, object})));
  expect_python_loads(pickle,
                      "c, o = value\n"
                      "assert c == 1 + 2j\n"
                      "assert type(o) is types.SimpleNamespace and o.a == 1 and o.me is o");
}

TEST(PickleWriter, SurrogatesInStrSurviveAsPythonReadsThem) {
  ValueTree tree;
  tree.root = text(tree, "a\xed\xa0\x80z");  // "a\ud800z", as surrogatepass encodes it
  expect_python_loads(write(tree), "assert value == 'a\\ud800z', ascii(value)");
}

TEST(PickleWriter, NumpyDtypesLoadAsTheSameDtype) {
  const std::vector<std::string> descrs = {"<f4",
                                           "|b1",
                                           "<c16",
                                           "<M8[ns]",
                                           ">i2",
                                           "|u1",
                                           "|i1",
                                           "<f2",
                                           ">f8",
                                           "<u8",
                                           "<c32",
                                           "<f16",
                                           "<M8",
                                           "<m8[10ms]",
                                           ">M8[W]",
                                           "<m8[Y]",
                                           "<M8[2147483647s]"};
  std::map<std::string, std::string> files;
  std::string script = "import sys, pickle, numpy\n";
  for (size_t i = 0; i < descrs.size(); ++i) {
    ValueTree tree;
    tree.root = tree.add(NumpyDtypeValue{descrs[i]});
    const std::string name = "dtype" + std::to_string(i) + ".pkl";
    files[name] = write(tree);
    script += "d = pickle.load(open(sys.argv[1] + '/" + name +
              "', 'rb'))\n"
              "assert d.str == '" +
              descrs[i] +
              "', d.str\n"
              "assert d.__reduce__() == numpy.dtype('" +
              descrs[i] + "').__reduce__(), d.__reduce__()\n";
  }
  auto run = run_python(script + "print('OK')\n", files);
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

TEST(PickleWriter, NonCanonicalOrNonNumericDtypesAreRejected) {
  for (const char* descr : {"f4", "<b1", "|f4", "=f4", "<f3", "<i08", "<M8[1ns]", "<M8[0ns]", "<M8[generic]", "<M8[ns",
                            "<M8[xs]", "<M8[2147483648s]", "<U3", "|S4", "|V8", "|O", "<f4 ", ""}) {
    ValueTree tree;
    tree.root = tree.add(NumpyDtypeValue{descr});
    EXPECT_EQ(write_error(tree).code, ErrorCode::kInvalidArgument) << descr;
  }
}

TEST(PickleWriter, NumpyArraysAndScalarsLoadInNumpy) {
  ValueTree tree;
  NodeId int16 = tree.add(NumpyDtypeValue{"<i2"});
  std::string data;
  for (int i = 0; i < 6; ++i) data += std::string{static_cast<char>(i), '\0'};
  NodeId c_order = tree.add(NumpyArrayValue{int16, {2, 3}, false, data});
  NodeId f_order = tree.add(NumpyArrayValue{int16, {2, 3}, true, data});
  NodeId flags = tree.add(NumpyArrayValue{tree.add(NumpyDtypeValue{"|b1"}), {3}, false, std::string("\1\0\1", 3)});
  NodeId times = tree.add(NumpyArrayValue{tree.add(NumpyDtypeValue{"<M8[ns]"}), {1}, false, le(1000, 8)});
  NodeId empty = tree.add(NumpyArrayValue{tree.add(NumpyDtypeValue{"<f8"}), {0, 4}, false, ""});
  NodeId zero_dim = tree.add(NumpyArrayValue{tree.add(NumpyDtypeValue{">u4"}), {}, false, std::string("\0\0\1\0", 4)});
  NodeId scalar = tree.add(NumpyScalarValue{tree.add(NumpyDtypeValue{"<f4"}), std::string("\0\0\xc0\x3f", 4)});
  NodeId truth = tree.add(NumpyScalarValue{tree.add(NumpyDtypeValue{"|b1"}), "\1"});
  NodeId root = list(tree, {c_order, f_order, flags, times, empty, zero_dim, scalar, truth, int16});
  const std::string pickle = write(rooted(tree, root));
  expect_python_loads(pickle,
                      "import numpy\n"
                      "c, f, b, t, e, z, s, truth, dtype = value\n"
                      "assert c.dtype == numpy.dtype('<i2') and c.tolist() == [[0, 1, 2], [3, 4, 5]]\n"
                      "assert c.flags.c_contiguous and not c.flags.f_contiguous\n"
                      "assert f.flags.f_contiguous and f.tolist() == [[0, 2, 4], [1, 3, 5]]\n"
                      "assert b.dtype == bool and b.tolist() == [True, False, True]\n"
                      "assert t.dtype == numpy.dtype('<M8[ns]') and t[0] == numpy.datetime64(1000, 'ns')\n"
                      "assert e.shape == (0, 4) and e.dtype == numpy.float64\n"
                      // Non-native arrays keep their byte order (numpy's own protocol-2 pickles lose it).
                      "assert z.shape == () and z.dtype == numpy.dtype('>u4') and int(z) == 256, z\n"
                      "assert type(s) is numpy.float32 and s == 1.5\n"
                      "assert type(truth) is numpy.bool_ and truth\n"
                      "assert c.dtype is dtype and f.dtype is dtype");
}

// torch.load(weights_only=True) of a zip built the way torch.save lays it out.
TEST(PickleWriter, TorchCheckpointLoadsWithWeightsOnly) {
  ValueTree tree;
  NodeId floats = tree.add(StorageRefValue{StorageType::kFloat, "0", "cpu", 6});
  NodeId pair = tree.add(StorageRefValue{StorageType::kFloat, "1", "cpu", 2});
  NodeId longs = tree.add(StorageRefValue{StorageType::kLong, "2", "cpu", 3});
  NodeId bools = tree.add(StorageRefValue{StorageType::kBool, "3", "cpu", 3});
  NodeId weight = tree.add(TensorValue{floats, 0, {2, 3}, {3, 1}, false, false, std::nullopt});
  NodeId row = tree.add(TensorValue{floats, 3, {3}, {1}, false, false, std::nullopt});
  NodeId column = tree.add(TensorValue{floats, 1, {2}, {3}, false, false, std::nullopt});
  NodeId parameter =
      tree.add(ParameterValue{tree.add(TensorValue{pair, 0, {2}, {1}, false, false, std::nullopt}), true});
  NodeId trained = tree.add(TensorValue{pair, 1, {1}, {1}, true, false, std::nullopt});
  NodeId ints = tree.add(TensorValue{longs, 0, {3}, {1}, false, false, std::nullopt});
  NodeId flags = tree.add(TensorValue{bools, 0, {3}, {1}, false, false, std::nullopt});
  NodeId old_style = tree.add(TensorValue{floats, 0, {3}, {2}, false, true, std::nullopt});
  NodeId scalar = tree.add(TensorValue{floats, 5, {}, {}, false, false, std::nullopt});
  NodeId misc = list(tree, {integer(tree, 1), text(tree, "two"),
                            tuple(tree, {integer(tree, 3), tree.add(NoneValue{}), tree.add(true)}),
                            tree.add(DictValue{{{text(tree, "k"), integer(tree, -5)}}})});
  NodeId metadata =
      tree.add(DictValue{{{text(tree, ""), tree.add(DictValue{{{text(tree, "version"), integer(tree, 1)}}})}}});
  std::vector<std::pair<NodeId, NodeId>> items = {{text(tree, "w"), weight},
                                                  {text(tree, "row"), row},
                                                  {text(tree, "col"), column},
                                                  {text(tree, "alias"), weight},
                                                  {text(tree, "p"), parameter},
                                                  {text(tree, "g"), trained},
                                                  {text(tree, "i"), ints},
                                                  {text(tree, "b"), flags},
                                                  {text(tree, "v1"), old_style},
                                                  {text(tree, "scalar"), scalar},
                                                  {text(tree, "shape"), tree.add(TorchSizeValue{{2, 3}})},
                                                  {text(tree, "dtype"), tree.add(GlobalValue{"torch", "float32"})},
                                                  {text(tree, "misc"), misc}};
  NodeId root = tree.add(OrderedDictValue{items, tree.add(DictValue{{{text(tree, "_metadata"), metadata}}})});
  tree.root = root;

  const std::string script = R"(
import sys, struct, zipfile, collections, torch
folder = sys.argv[1]
records = {'0': struct.pack('<6f', *range(6)), '1': struct.pack('<2f', 0.5, -1),
           '2': struct.pack('<3q', 1, -2, 3), '3': bytes([1, 0, 1])}
for name in ['seed0.pkl', 'seed7.pkl', 'seed8.pkl']:
    path = folder + '/' + name + '.pt'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('archive/data.pkl', open(folder + '/' + name, 'rb').read())
        for key, data in records.items():
            archive.writestr('archive/data/' + key, data)
        archive.writestr('archive/version', '3\n')
    sd = torch.load(path, weights_only=True)
    assert type(sd) is collections.OrderedDict
    assert list(sd) == ['w', 'row', 'col', 'alias', 'p', 'g', 'i', 'b', 'v1', 'scalar', 'shape', 'dtype', 'misc']
    w = sd['w']
    assert w.dtype == torch.float32 and w.shape == (2, 3) and w.stride() == (3, 1)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert sd['row'].storage_offset() == 3 and sd['row'].tolist() == [3, 4, 5]
    assert sd['col'].stride() == (3,) and sd['col'].tolist() == [1, 4]
    assert sd['v1'].tolist() == [0, 2, 4] and sd['scalar'].shape == () and sd['scalar'].item() == 5
    pointers = {sd[k].storage().data_ptr() for k in ['w', 'row', 'col', 'v1', 'scalar']}
    assert len(pointers) == 1, pointers
    assert sd['alias'] is w
    p = sd['p']
    assert isinstance(p, torch.nn.Parameter) and p.requires_grad and p.tolist() == [0.5, -1]
    assert sd['g'].requires_grad and not w.requires_grad and sd['g'].tolist() == [-1]
    assert sd['g'].storage().data_ptr() == p.storage().data_ptr()
    assert sd['i'].dtype == torch.int64 and sd['i'].tolist() == [1, -2, 3]
    assert sd['b'].dtype == torch.bool and sd['b'].tolist() == [True, False, True]
    assert sd['shape'] == torch.Size([2, 3]) and type(sd['shape']) is torch.Size
    assert sd['dtype'] is torch.float32
    assert sd['misc'] == [1, 'two', (3, None, True), {'k': -5}]
    assert sd._metadata == {'': {'version': 1}}
print('OK')
)";
  auto run = run_python(script, {{"seed0.pkl", write(tree)},
                                 {"seed7.pkl", write(tree, {PersistentIdStyle::kTorchArchive, 7})},
                                 {"seed8.pkl", write(tree, {PersistentIdStyle::kTorchArchive, 8})}});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("OK"));
}

// --- layout variation ---

ValueTree shared_and_cyclic_tree() {
  ValueTree tree;
  std::vector<NodeId> items;
  for (int i = 0; i < 40; ++i) {
    NodeId shared = text(tree, "s" + std::to_string(i));
    items.push_back(tuple(tree, {shared, shared, integer(tree, i)}));
  }
  NodeId root = list(tree, items);
  std::get<ListValue>(tree.at(root)).items.push_back(root);
  tree.root = root;
  return tree;
}

TEST(PickleWriter, SeedsVaryTheLayoutButNotTheValue) {
  const ValueTree tree = shared_and_cyclic_tree();
  const std::string plain = write(tree);
  const std::string seeded = write(tree, {PersistentIdStyle::kNone, 1});
  EXPECT_EQ(write(tree), plain);
  EXPECT_EQ(write(tree, {PersistentIdStyle::kNone, 1}), seeded);
  EXPECT_NE(seeded, plain);
  EXPECT_NE(write(tree, {PersistentIdStyle::kNone, 2}), seeded);
  const std::string checks =
      "assert value[-1] is value and len(value) == 41\n"
      "assert all(t[0] is t[1] and t[0] == 's%d' % i and t[2] == i for i, t in enumerate(value[:-1]))\n";
  expect_python_loads(plain, checks);
  expect_python_loads(seeded, checks +
                                  "import pickletools\n"
                                  "puts = [a for o, a, _ in pickletools.genops(open(sys.argv[1] + '/value.pkl', "
                                  "'rb').read()) if o.name.endswith('PUT')]\n"
                                  "assert len(puts) > 41 and puts != sorted(puts), puts");
}

TEST(PickleWriter, EvenATinyTreeGetsSeededPadding) {
  ValueTree tree;
  tree.root = tree.add(NoneValue{});
  EXPECT_EQ(write(tree), kHeader + op('N') + kStop);
  const std::string seeded = write(tree, {PersistentIdStyle::kNone, 99});
  EXPECT_NE(seeded, kHeader + op('N') + kStop);
  expect_python_loads(seeded, "assert value is None");
}

// --- iteration, streaming and errors ---

TEST(PickleWriter, DeepNestingUsesHeapNotCallStack) {
  constexpr int kDepth = 200'000;
  ValueTree tree;
  NodeId inner = list(tree, {});
  for (int i = 1; i < kDepth; ++i) inner = (i % 2 == 0) ? list(tree, {inner}) : tuple(tree, {inner});
  tree.root = inner;
  const std::string pickle = write(tree);
  expect_python_loads(pickle,
                      "depth = 0\n"
                      "while value:\n"
                      "    value, depth = value[0], depth + 1\n"
                      "assert depth == " +
                          std::to_string(kDepth - 1) + ", depth");
}

// Records the size of every write it receives.
class RecordingSink final : public ByteSink {
 public:
  uint64_t position() const override { return position_; }
  std::vector<size_t> writes;

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    writes.push_back(bytes.size());
    position_ += bytes.size();
    return {};
  }
  uint64_t position_ = 0;
};

TEST(PickleWriter, LargeBytesAreStreamedInChunks) {
  ValueTree tree;
  tree.root = bytes(tree, std::string(1 << 20, '\xff'));
  RecordingSink sink;
  ASSERT_TRUE(write_pickle(tree, {}, sink));
  EXPECT_GT(sink.writes.size(), 30u);
  for (size_t size : sink.writes) EXPECT_LE(size, 64u * 1024);
  EXPECT_GT(sink.position(), 2u << 20);
}

class FailingSink final : public ByteSink {
 public:
  uint64_t position() const override { return 0; }

 private:
  Status write_bytes(std::span<const uint8_t>) override { return fail(ErrorCode::kIo, "disk full"); }
};

TEST(PickleWriter, SinkErrorsArePassedOn) {
  ValueTree tree;
  tree.root = text(tree, "x");
  FailingSink sink;
  auto status = write_pickle(tree, {}, sink);
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, ErrorCode::kIo);
}

TEST(PickleWriter, CyclesThroughImmutableNodesAreUnsupported) {
  {
    ValueTree tree;  // t = ([t],): the list's item is the tuple that is still being written
    NodeId inner = list(tree, {});
    NodeId outer = tuple(tree, {inner});
    std::get<ListValue>(tree.at(inner)).items = {outer};
    EXPECT_EQ(write_error(rooted(tree, outer)).code, ErrorCode::kUnsupported);
    // Entered through the list instead, the same cycle is fine: l = [(l,)].
    expect_python_loads(write(rooted(tree, inner)), "assert value[0][0] is value");
  }
  {
    ValueTree tree;  // a set whose item refers back to it through a list
    NodeId set = tree.add(SetValue{});
    std::get<SetValue>(tree.at(set)).items = {tuple(tree, {list(tree, {set})})};
    EXPECT_EQ(write_error(rooted(tree, set)).code, ErrorCode::kUnsupported);
  }
  {
    ValueTree tree;  // a tensor whose metadata dict holds the tensor itself
    NodeId storage = tree.add(StorageRefValue{StorageType::kFloat, "0", "cpu", 1});
    NodeId metadata = tree.add(DictValue{});
    NodeId tensor = tree.add(TensorValue{storage, 0, {1}, {1}, false, false, metadata});
    std::get<DictValue>(tree.at(metadata)).items = {{text(tree, "me"), tensor}};
    EXPECT_EQ(write_error(rooted(tree, tensor)).code, ErrorCode::kUnsupported);
  }
}

TEST(PickleWriter, TreesThatBreakTheValueContractAreRejected) {
  auto expect_invalid = [](ValueTree tree, PickleWriteOptions options, const char* why) {
    EXPECT_EQ(write_error(tree, options).code, ErrorCode::kInvalidArgument) << why;
  };
  {
    ValueTree tree;
    tree.root = 3;
    expect_invalid(tree, {}, "root out of range");
    tree.root = list(tree, {7});
    expect_invalid(tree, {}, "child out of range");
  }
  {
    ValueTree tree;
    NodeId storage = tree.add(StorageRefValue{StorageType::kFloat, "0", "cpu", 1});
    tree.root = storage;
    expect_invalid(tree, {PersistentIdStyle::kNone, 0}, "storage without persistent ids");
    tree.root = tree.add(TensorValue{text(tree, "not a storage"), 0, {1}, {1}, false, false, std::nullopt});
    expect_invalid(tree, {}, "tensor over a str");
    tree.root = tree.add(TensorValue{storage, 0, {1, 1}, {1}, false, false, std::nullopt});
    expect_invalid(tree, {}, "sizes and strides of different lengths");
    tree.root = tree.add(TensorValue{storage, 0, {1}, {1}, true, true, std::nullopt});
    expect_invalid(tree, {}, "_rebuild_tensor with requires_grad");
    tree.root = tree.add(ParameterValue{storage, true});
    expect_invalid(tree, {}, "parameter over a storage");
  }
  {
    ValueTree tree;
    tree.root = text(tree, "bad \xff utf-8");
    expect_invalid(tree, {}, "invalid UTF-8");
    tree.root = text(tree, "\xc0\x80");
    expect_invalid(tree, {}, "overlong UTF-8");
    tree.root = tree.add(GlobalValue{"os\nsystem", "x"});
    expect_invalid(tree, {}, "newline in a global");
    tree.root = tree.add(GlobalValue{"torch", ""});
    expect_invalid(tree, {}, "empty global name");
    tree.root = tree.add(GlobalValue{"torch", "\xed\xa0\x80"});
    expect_invalid(tree, {}, "surrogate in a global");
  }
  {
    ValueTree tree;
    tree.root = tree.add(IntValue{0, std::string(8, '\x01')});
    expect_invalid(tree, {}, "big int that fits int64");
    tree.root = tree.add(IntValue{0, std::string(9, '\x01') + std::string(1, '\0')});
    expect_invalid(tree, {}, "big int with a redundant sign byte");
    tree.root = tree.add(IntValue{5, std::string(9, '\x01')});
    expect_invalid(tree, {}, "big int with small set");
  }
  {
    ValueTree tree;
    NodeId dtype = tree.add(NumpyDtypeValue{"<f4"});
    tree.root = tree.add(NumpyArrayValue{dtype, {2, 2}, false, std::string(15, '\0')});
    expect_invalid(tree, {}, "array data of the wrong size");
    tree.root = tree.add(NumpyScalarValue{dtype, std::string(8, '\0')});
    expect_invalid(tree, {}, "scalar data of the wrong size");
    tree.root = tree.add(NumpyArrayValue{text(tree, "f4"), {}, false, std::string(4, '\0')});
    expect_invalid(tree, {}, "array with a str dtype");
    tree.root = tree.add(OperatorCallValue{text(tree, "f"), tuple(tree, {}), false, std::nullopt});
    expect_invalid(tree, {}, "operator call of a str");
  }
}

}  // namespace
}  // namespace zoogate::cdr
