// Pickle opcodes of protocols 0 to 5, named as in CPython's pickletools: one table for the VM that
// reads them, the writer that emits them and content identification, which walks the first few.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace zoogate::cdr {

enum class Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kFloat = 'F',
  kInt = 'I',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kLong = 'L',
  kBinInt2 = 'M',
  kNone = 'N',
  kPersId = 'P',
  kBinPersId = 'Q',
  kReduce = 'R',
  kString = 'S',
  kBinString = 'T',
  kShortBinString = 'U',
  kUnicode = 'V',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kGet = 'g',
  kBinGet = 'h',
  kInst = 'i',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kObj = 'o',
  kPut = 'p',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kProto = 0x80,
  kNewObj = 0x81,
  kExt1 = 0x82,
  kExt2 = 0x83,
  kExt4 = 0x84,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8A,
  kLong4 = 0x8B,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kShortBinUnicode = 0x8C,
  kBinUnicode8 = 0x8D,
  kBinBytes8 = 0x8E,
  kEmptySet = 0x8F,
  kAddItems = 0x90,
  kFrozenSet = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
  kByteArray8 = 0x96,
  kNextBuffer = 0x97,
  kReadOnlyBuffer = 0x98,
};


// How an opcode's operand is laid out in the stream.
enum class PickleOperand {
  kNone,
  kFixed1,
  kFixed2,
  kFixed4,
  kFixed8,
  kLength1,  // a 1-byte length, then that many bytes
  kLength4,  // a 4-byte little-endian length, then that many bytes
  kLength8,  // an 8-byte little-endian length, then that many bytes
  kIntLine,       // INT: optional '-', decimal digits, '\n'
  kLongLine,      // LONG: optional '-', decimal digits, optional 'L', '\n'
  kFloatLine,     // FLOAT: a float literal, '\n'
  kQuotedLine,    // STRING: a quoted Python literal, '\n'
  kAnyLine,       // UNICODE: raw-unicode-escape text, '\n'
  kPrintableLine, // PERSID: printable ASCII, '\n'
  kMemoLine,      // GET/PUT: decimal digits, '\n'
  kNameLines,     // GLOBAL/INST: a module line and a name line of identifier characters
};

struct PickleOpcode {
  uint8_t code;
  PickleOperand operand;
  uint8_t protocol;  // the protocol that introduced the opcode
  std::string_view name;
};

// Every opcode of pickle protocols 0 to 5, as in CPython's pickletools.
inline constexpr std::array kPickleOpcodes = {
    PickleOpcode{'(', PickleOperand::kNone, 0, "MARK"},          PickleOpcode{'.', PickleOperand::kNone, 0, "STOP"},
    PickleOpcode{'0', PickleOperand::kNone, 0, "POP"},           PickleOpcode{'1', PickleOperand::kNone, 1, "POP_MARK"},
    PickleOpcode{'2', PickleOperand::kNone, 0, "DUP"},           PickleOpcode{'F', PickleOperand::kFloatLine, 0, "FLOAT"},
    PickleOpcode{'I', PickleOperand::kIntLine, 0, "INT"},        PickleOpcode{'J', PickleOperand::kFixed4, 1, "BININT"},
    PickleOpcode{'K', PickleOperand::kFixed1, 1, "BININT1"},     PickleOpcode{'L', PickleOperand::kLongLine, 0, "LONG"},
    PickleOpcode{'M', PickleOperand::kFixed2, 1, "BININT2"},     PickleOpcode{'N', PickleOperand::kNone, 0, "NONE"},
    PickleOpcode{'P', PickleOperand::kPrintableLine, 0, "PERSID"}, PickleOpcode{'Q', PickleOperand::kNone, 1, "BINPERSID"},
    PickleOpcode{'R', PickleOperand::kNone, 0, "REDUCE"},        PickleOpcode{'S', PickleOperand::kQuotedLine, 0, "STRING"},
    PickleOpcode{'T', PickleOperand::kLength4, 1, "BINSTRING"},  PickleOpcode{'U', PickleOperand::kLength1, 1, "SHORT_BINSTRING"},
    PickleOpcode{'V', PickleOperand::kAnyLine, 0, "UNICODE"},    PickleOpcode{'X', PickleOperand::kLength4, 1, "BINUNICODE"},
    PickleOpcode{'a', PickleOperand::kNone, 0, "APPEND"},        PickleOpcode{'b', PickleOperand::kNone, 0, "BUILD"},
    PickleOpcode{'c', PickleOperand::kNameLines, 0, "GLOBAL"},   PickleOpcode{'d', PickleOperand::kNone, 0, "DICT"},
    PickleOpcode{'}', PickleOperand::kNone, 1, "EMPTY_DICT"},    PickleOpcode{'e', PickleOperand::kNone, 1, "APPENDS"},
    PickleOpcode{'g', PickleOperand::kMemoLine, 0, "GET"},       PickleOpcode{'h', PickleOperand::kFixed1, 1, "BINGET"},
    PickleOpcode{'i', PickleOperand::kNameLines, 0, "INST"},     PickleOpcode{'j', PickleOperand::kFixed4, 1, "LONG_BINGET"},
    PickleOpcode{'l', PickleOperand::kNone, 0, "LIST"},          PickleOpcode{']', PickleOperand::kNone, 1, "EMPTY_LIST"},
    PickleOpcode{'o', PickleOperand::kNone, 1, "OBJ"},           PickleOpcode{'p', PickleOperand::kMemoLine, 0, "PUT"},
    PickleOpcode{'q', PickleOperand::kFixed1, 1, "BINPUT"},      PickleOpcode{'r', PickleOperand::kFixed4, 1, "LONG_BINPUT"},
    PickleOpcode{'s', PickleOperand::kNone, 0, "SETITEM"},       PickleOpcode{'t', PickleOperand::kNone, 0, "TUPLE"},
    PickleOpcode{')', PickleOperand::kNone, 1, "EMPTY_TUPLE"},   PickleOpcode{'u', PickleOperand::kNone, 1, "SETITEMS"},
    PickleOpcode{'G', PickleOperand::kFixed8, 1, "BINFLOAT"},    PickleOpcode{0x80, PickleOperand::kFixed1, 2, "PROTO"},
    PickleOpcode{0x81, PickleOperand::kNone, 2, "NEWOBJ"},       PickleOpcode{0x82, PickleOperand::kFixed1, 2, "EXT1"},
    PickleOpcode{0x83, PickleOperand::kFixed2, 2, "EXT2"},       PickleOpcode{0x84, PickleOperand::kFixed4, 2, "EXT4"},
    PickleOpcode{0x85, PickleOperand::kNone, 2, "TUPLE1"},       PickleOpcode{0x86, PickleOperand::kNone, 2, "TUPLE2"},
    PickleOpcode{0x87, PickleOperand::kNone, 2, "TUPLE3"},       PickleOpcode{0x88, PickleOperand::kNone, 2, "NEWTRUE"},
    PickleOpcode{0x89, PickleOperand::kNone, 2, "NEWFALSE"},     PickleOpcode{0x8a, PickleOperand::kLength1, 2, "LONG1"},
    PickleOpcode{0x8b, PickleOperand::kLength4, 2, "LONG4"},     PickleOpcode{'B', PickleOperand::kLength4, 3, "BINBYTES"},
    PickleOpcode{'C', PickleOperand::kLength1, 3, "SHORT_BINBYTES"}, PickleOpcode{0x8c, PickleOperand::kLength1, 4, "SHORT_BINUNICODE"},
    PickleOpcode{0x8d, PickleOperand::kLength8, 4, "BINUNICODE8"}, PickleOpcode{0x8e, PickleOperand::kLength8, 4, "BINBYTES8"},
    PickleOpcode{0x8f, PickleOperand::kNone, 4, "EMPTY_SET"},    PickleOpcode{0x90, PickleOperand::kNone, 4, "ADDITEMS"},
    PickleOpcode{0x91, PickleOperand::kNone, 4, "FROZENSET"},    PickleOpcode{0x92, PickleOperand::kNone, 4, "NEWOBJ_EX"},
    PickleOpcode{0x93, PickleOperand::kNone, 4, "STACK_GLOBAL"}, PickleOpcode{0x94, PickleOperand::kNone, 4, "MEMOIZE"},
    PickleOpcode{0x95, PickleOperand::kFixed8, 4, "FRAME"},      PickleOpcode{0x96, PickleOperand::kLength8, 5, "BYTEARRAY8"},
    PickleOpcode{0x97, PickleOperand::kNone, 5, "NEXT_BUFFER"},  PickleOpcode{0x98, PickleOperand::kNone, 5, "READONLY_BUFFER"},
};

}  // namespace zoogate::cdr
