#include "cdr/policy.h"

namespace zoogate::cdr {

std::string_view to_string(FindingKind kind) {
  switch (kind) {
    case FindingKind::kForbiddenGlobal: return "forbidden_global";
    case FindingKind::kForbiddenCall: return "forbidden_call";
    case FindingKind::kForbiddenBuild: return "forbidden_build";
    case FindingKind::kForbiddenPersistentId: return "forbidden_persistent_id";
  }
  return "unknown";
}

std::string_view to_string(Action action) { return action == Action::kDisarm ? "disarm" : "block"; }

Action Policy::action_for(FindingKind kind) const {
  switch (kind) {
    case FindingKind::kForbiddenGlobal: return forbidden_global;
    case FindingKind::kForbiddenCall: return forbidden_call;
    case FindingKind::kForbiddenBuild: return forbidden_build;
    case FindingKind::kForbiddenPersistentId: return forbidden_persistent_id;
  }
  return Action::kBlock;
}

}  // namespace zoogate::cdr
