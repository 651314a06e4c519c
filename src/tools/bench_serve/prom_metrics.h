// Reads the Prometheus text exposition format (what GET /metrics returns) tolerantly: the load
// generator does not know the server's metric names in advance, so it keeps every sample and
// picks gauges by name patterns (see MetricPeaks).
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace nb::bench_serve {

struct PromSample {
  std::string name;    // metric name, e.g. nibble_num_requests_running
  std::string labels;  // the raw label set between the braces ("" when absent), e.g. model="x"
  double value = 0;
};

// Parses the text format (version 0.0.4): '#' lines are comments/metadata, each other line is
// `name[{labels}] value [timestamp]`. Lines that do not parse are skipped (the exposition may be
// partly garbled or newer than this reader); label values may contain escaped quotes and braces.
std::vector<PromSample> parse_prometheus_text(std::string_view text);

// "name" or "name{labels}": one key per time series.
std::string series_key(const PromSample& sample);

// The serving gauges a benchmark reports, matched by name: any metric whose name starts with
// "nibble_" and contains "running" or "kv_blocks_used" (histogram/counter series, i.e. names
// ending in _bucket, _sum, _count, _total or _created, are not gauges and are skipped).
bool is_tracked_gauge(std::string_view name);

// The value of the first series in `m` whose name contains `needle`, preferring the exact name
// `preferred` (the maximum over its label sets); NaN when there is none.
double pick_series(const std::map<std::string, double>& m, std::string_view preferred, std::string_view needle);

// Running maxima of the tracked gauges over the scrapes of a run, plus their last values.
class MetricPeaks {
 public:
  void observe(const std::vector<PromSample>& samples);
  int64_t num_scrapes() const { return num_scrapes_; }
  // Per series ("name" or "name{labels}"): the peak and the most recent value.
  const std::map<std::string, double>& peaks() const { return peaks_; }
  const std::map<std::string, double>& last() const { return last_; }
  // Mean over the scrapes that reported the series (the scrapes are evenly spaced in time, so
  // this is a time average: e.g. the mean number of running sequences).
  std::map<std::string, double> means() const;
  // The peak of the first tracked series whose name contains `needle`, preferring the exact
  // name `preferred`; NaN when no such gauge was ever seen.
  double peak_of(std::string_view preferred, std::string_view needle) const;
  double last_of(std::string_view preferred, std::string_view needle) const;

 private:
  int64_t num_scrapes_ = 0;
  std::map<std::string, double> peaks_, last_, sums_;
  std::map<std::string, int64_t> counts_;
};

}  // namespace nb::bench_serve
