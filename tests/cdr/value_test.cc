#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "cdr/value.h"

namespace zoogate::cdr {
namespace {

// A list holding the same dict twice, and itself: sharing and a cycle.
ValueTree shared_and_cyclic(bool share) {
  ValueTree tree;
  NodeId key = tree.add(StrValue{"k"});
  NodeId one = tree.add(IntValue{1, {}});
  NodeId dict = tree.add(DictValue{{{key, one}}});
  NodeId second = share ? dict : tree.add(DictValue{{{key, one}}});
  NodeId list = tree.add(ListValue{});
  std::get<ListValue>(tree.at(list)).items = {dict, second, list};
  tree.root = list;
  return tree;
}

TEST(StructurallyEqual, SharingAndCyclesMustMatch) {
  EXPECT_TRUE(structurally_equal(shared_and_cyclic(true), shared_and_cyclic(true)));
  EXPECT_TRUE(structurally_equal(shared_and_cyclic(false), shared_and_cyclic(false)));
  EXPECT_FALSE(structurally_equal(shared_and_cyclic(true), shared_and_cyclic(false)));
}

TEST(StructurallyEqual, NumberingDoesNotMatterButValuesDo) {
  ValueTree a;
  a.root = a.add(TupleValue{{a.add(StrValue{"x"}), a.add(FloatValue{1.5})}});
  ValueTree b;
  NodeId f = b.add(FloatValue{1.5});
  NodeId s = b.add(StrValue{"x"});
  b.root = b.add(TupleValue{{s, f}});
  EXPECT_TRUE(structurally_equal(a, b));
  std::get<FloatValue>(b.at(f)).value = -1.5;
  EXPECT_FALSE(structurally_equal(a, b));
}

TEST(FloatValue, ComparesBitsSoSignedZeroAndNanAreExact) {
  EXPECT_FALSE(FloatValue{0.0} == FloatValue{-0.0});
  EXPECT_TRUE(FloatValue{std::nan("")} == FloatValue{std::nan("")});
}

TEST(StorageTypes, NamesAndSizesRoundTrip) {
  EXPECT_EQ(storage_type_from_name("BFloat16Storage"), StorageType::kBFloat16);
  EXPECT_EQ(storage_element_size(StorageType::kComplexDouble), 16u);
  EXPECT_STREQ(storage_type_name(StorageType::kLong), "LongStorage");
  EXPECT_FALSE(storage_type_from_name("PyObjectStorage"));
}

}  // namespace
}  // namespace zoogate::cdr

namespace zoogate::cdr {
namespace {

TEST(ReachableNodes, PreOrderEachOnceSkippingUnreachable) {
  ValueTree tree;
  NodeId orphan = tree.add(StrValue{"unreachable"});
  NodeId a = tree.add(StrValue{"a"});
  NodeId b = tree.add(StrValue{"b"});
  NodeId inner = tree.add(TupleValue{{b, a}});
  NodeId list = tree.add(ListValue{});
  std::get<ListValue>(tree.at(list)).items = {a, inner, list};
  tree.root = list;
  std::vector<NodeId> order = reachable_nodes(tree);
  EXPECT_EQ(order, (std::vector<NodeId>{list, a, inner, b}));
  EXPECT_EQ(std::count(order.begin(), order.end(), orphan), 0);
}

}  // namespace
}  // namespace zoogate::cdr

namespace zoogate::cdr {
namespace {

TEST(TensorLayout, ContiguityIgnoresUnitDimensionsAndCountsElements) {
  TensorValue row_major{0, 0, {2, 3}, {3, 1}, false, false, std::nullopt};
  TensorValue transposed{0, 0, {3, 2}, {1, 3}, false, false, std::nullopt};
  TensorValue unit_dimension{0, 0, {2, 1, 3}, {3, 99, 1}, false, false, std::nullopt};
  TensorValue scalar{0, 0, {}, {}, false, false, std::nullopt};
  EXPECT_TRUE(is_c_contiguous(row_major));
  EXPECT_FALSE(is_c_contiguous(transposed));
  EXPECT_TRUE(is_c_contiguous(unit_dimension));
  EXPECT_TRUE(is_c_contiguous(scalar));
  EXPECT_EQ(element_count(row_major), 6u);
  EXPECT_EQ(element_count(scalar), 1u);
}

}  // namespace
}  // namespace zoogate::cdr
