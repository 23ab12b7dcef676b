// Byte ranges of one file, read with pread(2) into one buffer: how a batch gathers its documents
// from a corpus `.bin`. The reference is a NumPy gather from the memory-mapped file
// (megatron_plm/data/corpus.py, `Corpus.read`); tests compare the two on real corpora.
//
// Why not the memory map: every document of a batch sits on a different page, and touching a page
// for the first time costs a page fault (minor with the file in the page cache, a synchronous disk
// read with read-ahead of up to 128 KiB otherwise), so the map's cost per document grows with the
// corpus. pread copies from the page cache without mapping anything, and several threads keep
// several reads in flight when the pages come from disk. The GIL is released throughout.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

// Reads ranges [begin, end) of the lists; returns 0 or the errno of the first failure, with `failed`
// set to the range that failed (a short read past the end of the file reports EIO).
int read_some(int fd, const int64_t* offsets, const int64_t* counts, const int64_t* starts, uint8_t* out,
              int64_t begin, int64_t end, int64_t* failed) {
  for (int64_t i = begin; i < end; ++i) {
    int64_t done = 0;
    while (done < counts[i]) {
      ssize_t got = pread(fd, out + starts[i] + done, static_cast<size_t>(counts[i] - done), offsets[i] + done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        *failed = i;
        return got < 0 ? errno : EIO;
      }
      done += got;
    }
  }
  return 0;
}

py::array_t<uint8_t> read_ranges(int fd, py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets,
                                 py::array_t<int64_t, py::array::c_style | py::array::forcecast> counts,
                                 int threads) {
  if (offsets.ndim() != 1 || counts.ndim() != 1 || offsets.shape(0) != counts.shape(0))
    throw std::invalid_argument("offsets and counts must be 1-d arrays of one length");
  const int64_t n = offsets.shape(0);
  const int64_t* off = offsets.data();
  const int64_t* cnt = counts.data();
  std::vector<int64_t> starts(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (off[i] < 0 || cnt[i] < 0) throw std::invalid_argument("range " + std::to_string(i) + " is negative");
    starts[i + 1] = starts[i] + cnt[i];
  }
  py::array_t<uint8_t> result(starts[n]);
  uint8_t* out = result.mutable_data();
  int error = 0;
  int64_t failed = -1;
  {
    py::gil_scoped_release release;
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, n / 64));  // ~64 reads per thread at least
    if (workers == 1) {
      error = read_some(fd, off, cnt, starts.data(), out, 0, n, &failed);
    } else {
      std::vector<int> errors(workers, 0);
      std::vector<int64_t> failures(workers, -1);
      std::vector<std::thread> pool;
      for (int64_t w = 0; w < workers; ++w) {
        pool.emplace_back([&, w] {
          errors[w] = read_some(fd, off, cnt, starts.data(), out, n * w / workers, n * (w + 1) / workers, &failures[w]);
        });
      }
      for (auto& t : pool) t.join();
      for (int64_t w = 0; w < workers; ++w) {
        if (errors[w]) {
          error = errors[w];
          failed = failures[w];
          break;
        }
      }
    }
  }
  if (error) {
    throw std::runtime_error("reading " + std::to_string(cnt[failed]) + " bytes at offset " +
                             std::to_string(off[failed]) + ": " + std::strerror(error));
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_read_ranges_ext, m) {
  m.doc() = "pread(2) of many byte ranges of one file into one buffer, the GIL released";
  m.def("read_ranges", &read_ranges, py::arg("fd"), py::arg("offsets"), py::arg("counts"), py::arg("threads") = 1,
        "Bytes [offsets[i], offsets[i] + counts[i]) of the file open at fd, concatenated in order");
}
