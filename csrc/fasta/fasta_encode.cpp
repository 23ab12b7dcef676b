// FASTA chunk parser + residue encoder: the hot loop of tools/preprocess_data.py.
//
// Implements exactly the rules of the pure-Python reference,
// megatron_plm/data/preprocess/encode.py:encode_fasta_chunk_reference (which tests compare against
// byte for byte): lines split on '\n'; a line holding a NUL byte is binary input; '>' starts
// a header whose rest must be valid UTF-8 and whose first ASCII-whitespace-separated word is
// the record id; other lines are stripped of ASCII whitespace, blank ones ignored; residues
// map through a 256-entry lookup table (255 = not a residue); trailing '*' of a record are
// dropped. Problems are returned, not raised, as (kind, line, record id, byte, position) and
// formatted in Python (megatron_plm/data/preprocess/fasta.py:problem_to_error).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// Keep in step with megatron_plm/data/preprocess/fasta.py and megatron_plm/data/preprocess/encode.py.
enum Problem : int { kNone = 0, kBinary = 1, kBeforeHeader = 2, kNoSequence = 3, kEmptyId = 4, kBadUtf8 = 5, kBadResidue = 6 };
enum Unknown : int { kUnknownError = 0, kUnknownToUnk = 1, kUnknownSkip = 2 };
enum Status : uint8_t { kOk = 0, kSkippedInvalid = 1, kMappedUnk = 2 };
constexpr uint8_t kInvalid = 255;

inline bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Well-formed UTF-8 per Unicode Table 3-7 (what Python's strict decoder accepts).
bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) { ++i; continue; }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else return false;
    if (i + need >= n) return false;  // truncated sequence at the end
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k <= need; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return false;
    i += need + 1;
  }
  return true;
}

struct Parser {
  const uint8_t* lookup;
  int unknown_mode;
  uint8_t unk_id;

  // Outputs.
  uint8_t* tokens;
  size_t n_tokens = 0;
  std::vector<int64_t> lengths;
  std::vector<uint8_t> status;
  std::string ids;

  // Problem, if any.
  int problem = kNone;
  int64_t problem_line = 0;
  bool problem_has_record = false;
  std::string problem_record;
  int problem_byte = 0;
  int64_t problem_position = 0;

  // Current record.
  bool in_record = false;
  std::string record_id;
  int64_t header_line = 0;
  size_t record_start = 0;     // index into tokens
  int64_t residues_seen = 0;   // bytes of sequence so far (stars included), for positions
  int64_t pending_stars = 0;   // '*' not yet known to be internal or trailing
  int64_t first_star_pos = 0;  // 1-based position of the first pending star
  bool saw_sequence_line = false;
  int64_t first_bad_pos = 0;   // 1-based; 0 = none
  int first_bad_byte = 0;

  void fail(int kind, int64_t line, bool with_record, int byte = 0, int64_t position = 0) {
    problem = kind;
    problem_line = line;
    problem_has_record = with_record;
    if (with_record) problem_record = record_id;
    problem_byte = byte;
    problem_position = position;
  }

  void note_bad(int byte, int64_t position) {
    if (first_bad_pos == 0) { first_bad_pos = position; first_bad_byte = byte; }
  }

  // Pending stars turned out to be internal: they are invalid residues.
  void flush_stars() {
    if (pending_stars == 0) return;
    note_bad('*', first_star_pos);
    if (unknown_mode == kUnknownToUnk) {
      std::memset(tokens + n_tokens, unk_id, static_cast<size_t>(pending_stars));
      n_tokens += static_cast<size_t>(pending_stars);
    }
    pending_stars = 0;
  }

  void encode_line(const uint8_t* s, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const uint8_t c = s[i];
      const uint8_t t = lookup[c];
      ++residues_seen;
      if (c == '*') {
        if (pending_stars == 0) first_star_pos = residues_seen;
        ++pending_stars;
        continue;
      }
      flush_stars();
      if (t == kInvalid) {
        note_bad(c, residues_seen);
        if (unknown_mode == kUnknownToUnk) tokens[n_tokens++] = unk_id;
        continue;
      }
      tokens[n_tokens++] = t;
    }
  }

  // Returns false when a problem stops the chunk.
  bool finish_record() {
    if (!in_record) return true;
    in_record = false;
    // Trailing stars are dropped; residues_seen - pending_stars is the kept length.
    const int64_t kept = residues_seen - pending_stars;
    if (!saw_sequence_line || kept == 0) { fail(kNoSequence, header_line, true); return false; }
    uint8_t st = kOk;
    if (first_bad_pos != 0) {
      if (unknown_mode == kUnknownError) {
        fail(kBadResidue, header_line, true, first_bad_byte, first_bad_pos);
        return false;
      }
      if (unknown_mode == kUnknownSkip) { n_tokens = record_start; st = kSkippedInvalid; }
      else st = kMappedUnk;
    }
    lengths.push_back(static_cast<int64_t>(n_tokens - record_start));
    status.push_back(st);
    ids.append(record_id);
    ids.push_back('\n');
    return true;
  }

  void start_record(std::string id, int64_t line) {
    in_record = true;
    record_id = std::move(id);
    header_line = line;
    record_start = n_tokens;
    residues_seen = 0;
    pending_stars = 0;
    saw_sequence_line = false;
    first_bad_pos = 0;
  }

  void run(const uint8_t* data, size_t size) {
    size_t pos = 0;
    int64_t line = 0;
    while (pos < size) {
      const uint8_t* start = data + pos;
      const void* nl = std::memchr(start, '\n', size - pos);
      size_t len = nl ? static_cast<size_t>(static_cast<const uint8_t*>(nl) - start) : size - pos;
      if (std::memchr(start, 0, len) != nullptr) { fail(kBinary, line, in_record); return; }
      if (len > 0 && start[0] == '>') {
        if (!finish_record()) return;
        const uint8_t* h = start + 1;
        size_t hn = len - 1;
        if (!valid_utf8(h, hn)) { fail(kBadUtf8, line, false); return; }
        size_t a = 0;
        while (a < hn && is_space(h[a])) ++a;
        size_t b = a;
        while (b < hn && !is_space(h[b])) ++b;
        if (a == b) { fail(kEmptyId, line, false); return; }
        start_record(std::string(reinterpret_cast<const char*>(h + a), b - a), line);
      } else {
        size_t a = 0, b = len;
        while (a < b && is_space(start[a])) ++a;
        while (b > a && is_space(start[b - 1])) --b;
        if (a < b) {
          if (!in_record) { fail(kBeforeHeader, line, false); return; }
          saw_sequence_line = true;
          encode_line(start + a, b - a);
        }
      }
      pos += len + 1;
      ++line;
    }
    finish_record();
  }
};

py::tuple encode_fasta_chunk(py::bytes chunk, py::array_t<uint8_t, py::array::c_style> lookup, int unknown_mode,
                             int unk_id) {
  if (lookup.ndim() != 1 || lookup.shape(0) != 256)
    throw std::invalid_argument("lookup must be a 1-D uint8 array of 256 entries");
  if (unknown_mode < kUnknownError || unknown_mode > kUnknownSkip)
    throw std::invalid_argument("unknown_mode must be 0 (error), 1 (unk) or 2 (skip)");
  if (unk_id < 0 || unk_id > 254) throw std::invalid_argument("unk_id must fit in uint8 and differ from 255");

  char* buffer = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(chunk.ptr(), &buffer, &size) != 0) throw py::error_already_set();

  py::array_t<uint8_t> tokens(static_cast<py::ssize_t>(size));
  Parser parser;
  parser.lookup = lookup.data();
  parser.unknown_mode = unknown_mode;
  parser.unk_id = static_cast<uint8_t>(unk_id);
  parser.tokens = tokens.mutable_data();
  {
    py::gil_scoped_release release;  // the chunk and outputs are ours; let worker threads run in parallel
    parser.run(reinterpret_cast<const uint8_t*>(buffer), static_cast<size_t>(size));
  }

  py::array_t<int64_t> lengths(static_cast<py::ssize_t>(parser.lengths.size()));
  std::memcpy(lengths.mutable_data(), parser.lengths.data(), parser.lengths.size() * sizeof(int64_t));
  py::array_t<uint8_t> status(static_cast<py::ssize_t>(parser.status.size()));
  std::memcpy(status.mutable_data(), parser.status.data(), parser.status.size());
  py::object problem = py::none();
  if (parser.problem != kNone) {
    py::object record = parser.problem_has_record
                            ? py::object(py::str(parser.problem_record))
                            : py::object(py::none());
    problem = py::make_tuple(parser.problem, parser.problem_line, record, parser.problem_byte, parser.problem_position);
  }
  return py::make_tuple(tokens, static_cast<py::ssize_t>(parser.n_tokens), lengths, status,
                        py::bytes(parser.ids), problem);
}

}  // namespace

PYBIND11_MODULE(_fasta_ext, m) {
  m.doc() = "C++ FASTA chunk parser and residue encoder (reference: megatron_plm/data/preprocess/encode.py)";
  m.def("encode_fasta_chunk", &encode_fasta_chunk, py::arg("chunk"), py::arg("lookup"), py::arg("unknown_mode"),
        py::arg("unk_id"),
        "Parse and encode one chunk of whole FASTA records.\n"
        "Returns (tokens, n_tokens, lengths, status, ids, problem).");
}
