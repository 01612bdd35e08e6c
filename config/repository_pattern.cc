#include "config/repository_pattern.h"

#include <cstddef>

namespace zoogate::config {
namespace {

constexpr std::string_view kAnySegments = "**";

bool is_repository_id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.';
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::vector<std::string_view> split_segments(std::string_view text) {
  std::vector<std::string_view> segments;
  size_t start = 0;
  while (true) {
    size_t slash = text.find('/', start);
    if (slash == std::string_view::npos) {
      segments.push_back(text.substr(start));
      return segments;
    }
    segments.push_back(text.substr(start, slash - start));
    start = slash + 1;
  }
}

// '*' matches any run of characters. Greedy with one backtracking point (the latest '*'), which is
// enough for single-star globs and keeps the cost at O(|glob| * |text|).
bool segment_matches(std::string_view glob, std::string_view text) {
  size_t g = 0;
  size_t t = 0;
  size_t star = std::string_view::npos;
  size_t text_at_star = 0;
  while (t < text.size()) {
    if (g < glob.size() && glob[g] == '*') {
      star = g++;
      text_at_star = t;
    } else if (g < glob.size() && ascii_lower(glob[g]) == ascii_lower(text[t])) {
      ++g;
      ++t;
    } else if (star != std::string_view::npos) {
      g = star + 1;
      t = ++text_at_star;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*') ++g;
  return g == glob.size();
}

}  // namespace

Result<RepositoryPattern> RepositoryPattern::parse(std::string_view pattern) {
  auto refuse = [](std::string_view why) { return fail(ErrorCode::kInvalidArgument, std::string(why)); };
  if (pattern.empty()) return refuse("the pattern is empty");
  std::vector<std::string> segments;
  for (std::string_view segment : split_segments(pattern)) {
    if (segment.empty()) return refuse("a segment is empty (a leading, trailing or doubled '/')");
    if (segment == "." || segment == "..") return refuse("'.' and '..' are not repository names");
    if (segment != kAnySegments) {
      if (segment.find(kAnySegments) != std::string_view::npos) {
        return refuse("'**' must be a whole segment between slashes");
      }
      for (char c : segment) {
        if (!is_repository_id_char(c) && c != '*') {
          return refuse("only letters, digits, '-', '_', '.', '/' and '*' may appear");
        }
      }
    }
    segments.emplace_back(segment);
  }
  return RepositoryPattern(std::string(pattern), std::move(segments));
}

bool RepositoryPattern::matches(std::string_view repository) const {
  std::vector<std::string_view> parts = split_segments(repository);
  // reachable[j]: the pattern segments seen so far can match exactly the first j parts of the id.
  std::vector<char> reachable(parts.size() + 1, 0);
  reachable[0] = 1;
  for (const std::string& segment : segments_) {
    std::vector<char> next(parts.size() + 1, 0);
    if (segment == kAnySegments) {
      char any_before = 0;
      for (size_t j = 0; j <= parts.size(); ++j) {
        any_before = static_cast<char>(any_before | reachable[j]);
        next[j] = any_before;
      }
    } else {
      for (size_t j = 0; j < parts.size(); ++j) {
        if (reachable[j] && segment_matches(segment, parts[j])) next[j + 1] = 1;
      }
    }
    reachable.swap(next);
  }
  return reachable[parts.size()] != 0;
}

}  // namespace zoogate::config
