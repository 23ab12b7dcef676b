// Keyed BLAKE2b with an 8-byte digest over many byte fields: the split hash of
// megatron_plm/data/samples/splits.py, whose reference is hashlib.blake2b(data, digest_size=8, key=salt)
// called once per cluster name or document (tests compare the two on real corpora).
// Written from RFC 7693; one field per call of `blake2b_fields`' loop, the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

constexpr uint64_t kIv[8] = {0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
                             0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
                             0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

constexpr uint8_t kSigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0}};

inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

inline uint64_t load64(const uint8_t* p) {
  uint64_t x = 0;
  for (int i = 7; i >= 0; --i) x = (x << 8) | p[i];  // little-endian on any host
  return x;
}

// Compress one 128-byte block into h; `t` is the byte count so far, `last` flags the final block.
void compress(uint64_t h[8], const uint8_t block[128], uint64_t t, bool last) {
  uint64_t m[16], v[16];
  for (int i = 0; i < 16; ++i) m[i] = load64(block + 8 * i);
  for (int i = 0; i < 8; ++i) v[i] = h[i], v[i + 8] = kIv[i];
  v[12] ^= t;  // the high word of the 128-bit counter stays 0 below 2^64 bytes
  if (last) v[14] = ~v[14];
  auto g = [&](int a, int b, int c, int d, uint64_t x, uint64_t y) {
    v[a] = v[a] + v[b] + x; v[d] = rotr(v[d] ^ v[a], 32);
    v[c] = v[c] + v[d];     v[b] = rotr(v[b] ^ v[c], 24);
    v[a] = v[a] + v[b] + y; v[d] = rotr(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];     v[b] = rotr(v[b] ^ v[c], 63);
  };
  for (int r = 0; r < 12; ++r) {
    const uint8_t* s = kSigma[r % 10];
    g(0, 4, 8, 12, m[s[0]], m[s[1]]);   g(1, 5, 9, 13, m[s[2]], m[s[3]]);
    g(2, 6, 10, 14, m[s[4]], m[s[5]]);  g(3, 7, 11, 15, m[s[6]], m[s[7]]);
    g(0, 5, 10, 15, m[s[8]], m[s[9]]);  g(1, 6, 11, 12, m[s[10]], m[s[11]]);
    g(2, 7, 8, 13, m[s[12]], m[s[13]]); g(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (int i = 0; i < 8; ++i) h[i] ^= v[i] ^ v[i + 8];
}

// BLAKE2b-64 of data[0:n] keyed with `key` (1..64 bytes): the key block is the first block.
uint64_t blake2b64(const uint8_t* key_block, uint64_t key_state[8], const uint8_t* data, uint64_t n) {
  uint64_t h[8];
  std::memcpy(h, key_state, sizeof(h));
  if (n == 0) {
    compress(h, key_block, 128, true);
    return h[0];
  }
  compress(h, key_block, 128, false);
  uint64_t done = 0;
  while (n - done > 128) {
    compress(h, data + done, 128 + done + 128, false);
    done += 128;
  }
  uint8_t last[128] = {0};
  std::memcpy(last, data + done, n - done);
  compress(h, last, 128 + n, true);
  return h[0];
}

py::array_t<uint64_t> blake2b_fields(py::array_t<uint8_t, py::array::c_style> buffer,
                                     py::array_t<int64_t, py::array::c_style> starts,
                                     py::array_t<int64_t, py::array::c_style> lengths, py::bytes key) {
  std::string k = key;
  if (k.empty() || k.size() > 64) throw std::invalid_argument("key must be 1..64 bytes");
  if (starts.size() != lengths.size()) throw std::invalid_argument("starts and lengths differ in size");
  const int64_t n = starts.size(), size = buffer.size();
  const uint8_t* data = buffer.data();
  const int64_t* s = starts.data();
  const int64_t* l = lengths.data();
  for (int64_t i = 0; i < n; ++i)
    if (s[i] < 0 || l[i] < 0 || s[i] + l[i] > size) throw std::out_of_range("field " + std::to_string(i) + " out of the buffer");
  uint8_t key_block[128] = {0};
  std::memcpy(key_block, k.data(), k.size());
  uint64_t state[8];
  std::memcpy(state, kIv, sizeof(state));
  state[0] ^= 0x01010000ULL ^ (static_cast<uint64_t>(k.size()) << 8) ^ 8ULL;  // fanout 1, depth 1, digest 8
  py::array_t<uint64_t> out(n);
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) o[i] = blake2b64(key_block, state, data + s[i], static_cast<uint64_t>(l[i]));
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_split_hash_ext, m) {
  m.doc() = "Keyed BLAKE2b-64 over many fields (reference: hashlib.blake2b in megatron_plm/data/samples/splits.py)";
  m.def("blake2b_fields", &blake2b_fields, py::arg("buffer"), py::arg("starts"), py::arg("lengths"), py::arg("key"),
        "Little-endian uint64 digest of blake2b(buffer[start:start+length], digest_size=8, key=key) per field.");
}
