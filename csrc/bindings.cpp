// The pybind11 module rdcnet_ext._C: thin, typed entry points over raw pointers. Python
// (rdcnet_ext/ops.py) validates arguments, allocates every output with torch and passes data
// pointers, sizes and, for CUDA, the device index and torch's current stream. No libtorch here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "postprocess/entry.h"
#include "ssdc/entry.h"

namespace py = pybind11;
using rdc::AssignArgs;

namespace {

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// A NumPy int64 array holding a copy of v.
py::array_t<int64_t> to_numpy(const std::vector<int64_t>& v) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(int64_t));
  return out;
}

void check_ndim(const std::vector<int64_t>& shape, const char* op) {
  if (shape.size() != 2 && shape.size() != 3)
    throw std::invalid_argument(std::string(op) + ": shape must have 2 or 3 entries");
}

// Keeps the vectors behind an AssignArgs alive for the duration of a call.
struct AssignCall {
  std::vector<int64_t> shape, cells;
  std::vector<double> spacing, cell, lo;
  AssignArgs args;
  AssignCall(std::vector<int64_t> shape_, std::vector<double> spacing_, uintptr_t centres,
             uintptr_t cell_start, uintptr_t cell_items, std::vector<int64_t> cells_,
             std::vector<double> cell_, std::vector<double> lo_, double tol)
      : shape(std::move(shape_)), cells(std::move(cells_)), spacing(std::move(spacing_)), cell(std::move(cell_)),
        lo(std::move(lo_)) {
    check_ndim(shape, "assign_to_centres");
    if (spacing.size() != shape.size() || cells.size() != shape.size() || cell.size() != shape.size() ||
        lo.size() != shape.size())
      throw std::invalid_argument("assign_to_centres: spacing, cells, cell and lo must have ndim entries");
    args = AssignArgs{static_cast<int>(shape.size()), this->shape.data(), this->spacing.data(),
                      ptr<const int64_t>(centres), ptr<const int32_t>(cell_start),
                      ptr<const int32_t>(cell_items), this->cells.data(), this->cell.data(),
                      this->lo.data(), tol};
  }
};

// sSDC geometry from Python lists (validated in rdcnet_ext/ops.py; re-checked here).
rdc::SsdcArgs ssdc_args(int64_t batch, int64_t groups, int64_t channels, const std::vector<int64_t>& shape,
                        const std::vector<int64_t>& dilations, double slope) {
  check_ndim(shape, "ssdc");
  if (dilations.empty() || dilations.size() > size_t(rdc::kSsdcMaxDilations))
    throw std::invalid_argument("ssdc: expected 1 to 16 dilations");
  rdc::SsdcArgs a{};
  a.ndim = int(shape.size());
  a.batch = batch, a.groups = groups, a.channels = channels;
  for (size_t i = 0; i < shape.size(); ++i) a.size[i] = shape[i];
  a.ndil = int(dilations.size());
  for (size_t i = 0; i < dilations.size(); ++i) {
    if (dilations[i] < 1) throw std::invalid_argument("ssdc: dilations must be >= 1");
    a.dilation[i] = dilations[i];
  }
  a.slope = slope;
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "rdcnet_ext native kernels (CPU, and CUDA when compiled); call through rdcnet_ext.ops";
#ifdef RDC_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  auto release = py::call_guard<py::gil_scoped_release>();

  m.def("hough_votes_cpu", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t emb,
                              uintptr_t mask, uintptr_t votes, int threads) {
    check_ndim(shape, "hough_votes");
    rdc::hough_votes_cpu(int(shape.size()), shape.data(), spacing.data(), ptr<const float>(emb),
                         ptr<const uint8_t>(mask), ptr<int32_t>(votes), threads);
  }, release);
  m.def("hough_votes_block_cpu", [](std::vector<int64_t> image_shape, int64_t pixels, std::vector<int64_t> box_shape,
                                    std::vector<int64_t> origin, std::vector<double> spacing, uintptr_t emb,
                                    uintptr_t mask, uintptr_t votes, int threads) {
    check_ndim(image_shape, "hough_votes_block");
    if (box_shape.size() != image_shape.size() || origin.size() != image_shape.size() ||
        spacing.size() != image_shape.size())
      throw std::invalid_argument("hough_votes_block: box_shape, origin and spacing must have ndim entries");
    rdc::BlockVotes r;
    {
      py::gil_scoped_release nogil;
      r = rdc::hough_votes_block_cpu(int(image_shape.size()), image_shape.data(), pixels, box_shape.data(),
                                     origin.data(), spacing.data(), ptr<const float>(emb), ptr<const uint8_t>(mask),
                                     ptr<int32_t>(votes), threads);
    }
    return py::make_tuple(to_numpy(r.bins), to_numpy(r.counts));
  }, "Votes of a block: fills `votes`; returns (outside bins, their counts).");
  m.def("box_sum_cpu", [](std::vector<int64_t> shape, int64_t radius, uintptr_t in, bool in_is_int64,
                          uintptr_t out, uintptr_t tmp, int threads) {
    check_ndim(shape, "find_peaks");
    rdc::box_sum_cpu(int(shape.size()), shape.data(), radius, ptr<const void>(in), in_is_int64,
                     ptr<int64_t>(out), ptr<int64_t>(tmp), threads);
  }, release);
  m.def("find_peaks_cpu", [](std::vector<int64_t> shape, std::vector<int64_t> window, int64_t min_votes,
                             uintptr_t score, bool score_is_int64, int threads) {
    check_ndim(shape, "find_peaks");
    std::vector<int64_t> flat;
    {
      py::gil_scoped_release nogil;
      flat = rdc::find_peaks_cpu(int(shape.size()), shape.data(), window.data(), min_votes,
                                 ptr<const void>(score), score_is_int64, threads);
    }
    return to_numpy(flat);
  }, "Flat row-major indices of the peaks, as a NumPy int64 array.");
  m.def("cell_candidates_cpu", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t centres,
                                  uintptr_t cell_start, uintptr_t cell_items, std::vector<int64_t> cells,
                                  std::vector<double> cell, std::vector<double> lo, double tol, uintptr_t counts, uintptr_t starts,
                                  uintptr_t items, int threads) {
    AssignCall call(shape, spacing, centres, cell_start, cell_items, cells, cell, lo, tol);
    rdc::cell_candidates_cpu(call.args, ptr<int32_t>(counts), ptr<const int32_t>(starts),
                             ptr<int32_t>(items), threads);
  }, release);
  m.def("assign_cpu", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t centres,
                         uintptr_t cell_start, uintptr_t cell_items, std::vector<int64_t> cells,
                         std::vector<double> cell, std::vector<double> lo, double tol, uintptr_t emb, uintptr_t mask,
                         uintptr_t cand_start, uintptr_t cand_items, double max_d2, uintptr_t labels,
                         int threads) {
    AssignCall call(shape, spacing, centres, cell_start, cell_items, cells, cell, lo, tol);
    rdc::assign_cpu(call.args, ptr<const float>(emb), ptr<const uint8_t>(mask), ptr<const int32_t>(cand_start),
                    ptr<const int32_t>(cand_items), max_d2, ptr<int32_t>(labels), threads);
  }, release);
  m.def("label_opening_cpu", [](std::vector<int64_t> shape, uintptr_t offsets, uintptr_t image_deltas,
                                uintptr_t padded_deltas, int64_t count,
                                std::vector<int64_t> halo, uintptr_t labels, bool is_int64, uintptr_t eroded,
                                uintptr_t out, int threads) {
    check_ndim(shape, "label_opening");
    rdc::label_opening_cpu(int(shape.size()), shape.data(), ptr<const int32_t>(offsets),
                           ptr<const int64_t>(image_deltas), ptr<const int64_t>(padded_deltas), count, halo.data(),
                           ptr<const void>(labels), is_int64, ptr<void>(eroded), ptr<void>(out), threads);
  }, release);
  m.def("ssdc_cpu_isa", [] { return std::string(rdc::ssdc_cpu_isa()); },
        "Vector instruction set the CPU sSDC kernels use on this machine.");
  m.def("ssdc_cpu_bf16_kind", [] { return std::string(rdc::ssdc_cpu_bf16_kind()); },
        "The bfloat16 CPU sSDC kernel of this machine (\"avx512_bf16\"), or \"\" where there is none.");
  m.def("ssdc_forward_cpu", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                               std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                               uintptr_t b, uintptr_t rw, uintptr_t rb, uintptr_t y, int threads) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_forward_cpu(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b), ptr<const void>(rw),
                          ptr<const void>(rb), ptr<void>(y), threads);
  }, release);
  m.def("ssdc_backward_cpu", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                                uintptr_t b, uintptr_t rw, uintptr_t gy, uintptr_t gx, uintptr_t gw, uintptr_t gb,
                                uintptr_t grw, uintptr_t grb, int threads) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_backward_cpu(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b), ptr<const void>(rw),
                           ptr<const void>(gy), ptr<void>(gx), ptr<void>(gw), ptr<void>(gb), ptr<void>(grw),
                           ptr<void>(grb), threads);
  }, release);

#ifdef RDC_WITH_CUDA
  m.def("ssdc_forward_cuda", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                                uintptr_t b, uintptr_t rw, uintptr_t rb, uintptr_t y, int device, uintptr_t stream) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_forward_cuda(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b), ptr<const void>(rw),
                           ptr<const void>(rb), ptr<void>(y), device, ptr<void>(stream));
  }, release);
  m.def("ssdc_backward_cuda", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                 std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                                 uintptr_t b, uintptr_t rw, uintptr_t gy, uintptr_t gx, uintptr_t gw, uintptr_t gb,
                                 uintptr_t grw, uintptr_t grb, int device, uintptr_t stream) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_backward_cuda(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b), ptr<const void>(rw),
                            ptr<const void>(gy), ptr<void>(gx), ptr<double>(gw), ptr<double>(gb), ptr<double>(grw),
                            ptr<double>(grb), device, ptr<void>(stream));
  }, release);
  m.def("ssdc_tc_supported", [](int64_t channels, int dtype, int device) {
    return rdc::ssdc_tc_supported(channels, dtype, device);
  }, release, "Whether the tensor-core sSDC kernels run this many channels per group of this dtype on the device.");
  m.def("ssdc_tc_forward_cuda", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                   std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                                   uintptr_t b, uintptr_t rw, uintptr_t rb, uintptr_t y, int device, uintptr_t stream) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_tc_forward_cuda(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b),
                              ptr<const void>(rw), ptr<const void>(rb), ptr<void>(y), device, ptr<void>(stream));
  }, release);
  m.def("ssdc_tc_workspace_floats", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                       std::vector<int64_t> dilations, int device) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, 0.0);
    return rdc::ssdc_tc_workspace_floats(a, device);
  }, release);
  m.def("ssdc_tc_backward_cuda", [](int64_t batch, int64_t groups, int64_t channels, std::vector<int64_t> shape,
                                    std::vector<int64_t> dilations, double slope, int dtype, uintptr_t x, uintptr_t w,
                                    uintptr_t b, uintptr_t rw, uintptr_t gy, uintptr_t gx, uintptr_t gw, uintptr_t gb,
                                    uintptr_t grw, uintptr_t grb, uintptr_t work, int64_t work_floats, int device,
                                    uintptr_t stream) {
    const rdc::SsdcArgs a = ssdc_args(batch, groups, channels, shape, dilations, slope);
    rdc::ssdc_tc_backward_cuda(a, dtype, ptr<const void>(x), ptr<const void>(w), ptr<const void>(b),
                               ptr<const void>(rw), ptr<const void>(gy), ptr<float>(gx), ptr<double>(gw),
                               ptr<double>(gb), ptr<double>(grw), ptr<double>(grb), ptr<float>(work), work_floats,
                               device, ptr<void>(stream));
  }, release);
  m.def("hough_votes_cuda", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t emb,
                               uintptr_t mask, uintptr_t votes, int device, uintptr_t stream) {
    check_ndim(shape, "hough_votes");
    rdc::hough_votes_cuda(int(shape.size()), shape.data(), spacing.data(), ptr<const float>(emb),
                          ptr<const uint8_t>(mask), ptr<int32_t>(votes), device, ptr<void>(stream));
  }, release);
  m.def("box_sum_cuda", [](std::vector<int64_t> shape, int64_t radius, uintptr_t in, bool in_is_int64,
                           uintptr_t out, uintptr_t tmp, int device, uintptr_t stream) {
    check_ndim(shape, "find_peaks");
    rdc::box_sum_cuda(int(shape.size()), shape.data(), radius, ptr<const void>(in), in_is_int64,
                      ptr<int64_t>(out), ptr<int64_t>(tmp), device, ptr<void>(stream));
  }, release);
  m.def("find_peaks_cuda", [](std::vector<int64_t> shape, std::vector<int64_t> window, int64_t min_votes,
                              uintptr_t score, bool score_is_int64, uintptr_t flags, int device,
                              uintptr_t stream) {
    check_ndim(shape, "find_peaks");
    rdc::find_peaks_cuda(int(shape.size()), shape.data(), window.data(), min_votes, ptr<const void>(score),
                         score_is_int64, ptr<uint8_t>(flags), device, ptr<void>(stream));
  }, release);
  m.def("cell_candidates_cuda", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t centres,
                                   uintptr_t cell_start, uintptr_t cell_items, std::vector<int64_t> cells,
                                   std::vector<double> cell, std::vector<double> lo, double tol, uintptr_t counts, uintptr_t starts,
                                   uintptr_t items, int device, uintptr_t stream) {
    AssignCall call(shape, spacing, centres, cell_start, cell_items, cells, cell, lo, tol);
    rdc::cell_candidates_cuda(call.args, ptr<int32_t>(counts), ptr<const int32_t>(starts), ptr<int32_t>(items),
                              device, ptr<void>(stream));
  }, release);
  m.def("assign_cuda", [](std::vector<int64_t> shape, std::vector<double> spacing, uintptr_t centres,
                          uintptr_t cell_start, uintptr_t cell_items, std::vector<int64_t> cells,
                          std::vector<double> cell, std::vector<double> lo, double tol, uintptr_t emb, uintptr_t mask,
                          uintptr_t cand_start, uintptr_t cand_items, double max_d2, uintptr_t labels,
                          int device, uintptr_t stream) {
    AssignCall call(shape, spacing, centres, cell_start, cell_items, cells, cell, lo, tol);
    rdc::assign_cuda(call.args, ptr<const float>(emb), ptr<const uint8_t>(mask), ptr<const int32_t>(cand_start),
                     ptr<const int32_t>(cand_items), max_d2, ptr<int32_t>(labels), device, ptr<void>(stream));
  }, release);
  m.def("label_opening_cuda", [](std::vector<int64_t> shape, uintptr_t offsets, uintptr_t image_deltas,
                                uintptr_t padded_deltas, int64_t count,
                                 std::vector<int64_t> halo, uintptr_t labels, bool is_int64, uintptr_t eroded,
                                 uintptr_t out, int device, uintptr_t stream) {
    check_ndim(shape, "label_opening");
    rdc::label_opening_cuda(int(shape.size()), shape.data(), ptr<const int32_t>(offsets),
                           ptr<const int64_t>(image_deltas), ptr<const int64_t>(padded_deltas), count, halo.data(),
                            ptr<const void>(labels), is_int64, ptr<void>(eroded), ptr<void>(out), device,
                            ptr<void>(stream));
  }, release);
#endif
}
