// Prompt-lookup / n-gram drafting: for n = max_n down to min_n, find the most recent earlier
// occurrence of the sequence's last n tokens and propose the (up to k) tokens that followed it.
#include <algorithm>
#include <string>

#include "engine/spec/drafter.h"

namespace nb::spec {
namespace {

class NgramDrafter final : public Drafter {
 public:
  explicit NgramDrafter(const NgramOptions& o) : options_(o) {}

  Result<Draft> propose(const DraftRequest& r) override {
    Draft d;
    const auto len = static_cast<int64_t>(r.tokens.size());
    for (int64_t n = std::min(options_.max_n, len - 1); n >= options_.min_n && d.tokens.empty(); --n) {
      const int32_t* suffix = r.tokens.data() + (len - n);
      // Most recent match first: start positions len - n - 1 down to 0.
      for (int64_t start = len - n - 1; start >= 0; --start) {
        if (!std::equal(suffix, suffix + n, r.tokens.data() + start)) continue;
        const int64_t from = start + n;  // < len: the continuation exists
        for (int64_t i = from; i < len && static_cast<int64_t>(d.tokens.size()) < r.k; ++i) {
          d.tokens.push_back(r.tokens[static_cast<size_t>(i)]);
        }
        break;
      }
    }
    return d;
  }
  void release(uint64_t) override {}
  const char* name() const override { return "ngram"; }

 private:
  NgramOptions options_;
};

}  // namespace

Result<std::unique_ptr<Drafter>> make_ngram_drafter(const NgramOptions& options) {
  if (options.min_n < 1 || options.max_n < options.min_n) {
    return invalid_argument("n-gram drafter: need 1 <= min_n <= max_n; got min_n " + std::to_string(options.min_n) +
                            ", max_n " + std::to_string(options.max_n));
  }
  return std::unique_ptr<Drafter>(new NgramDrafter(options));
}

}  // namespace nb::spec
