// kb_cpp_smoke -- ctest smoke test of libkb_cpp: every entry point once per ISA the CPU has, on small odd
// shapes, fp32, against a naive double-precision loop; outputs poisoned with NaN first. Seconds, not
// minutes: the thorough checks are tests/test_cpp_kernels.py.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

extern "C" {
const char* kb_cpp_last_error(void);
int kb_cpp_isa(void);
int kb_cpp_set_isa(int);
int kb_cpp_softmax(const void*, void*, int64_t, int64_t, int64_t, int64_t, int, int);
int kb_cpp_rmsnorm(const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, float, int, int);
int kb_cpp_layernorm(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, float, int, int);
int kb_cpp_gemm(const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);
int kb_cpp_attention_fwd(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int, float, int, int);
int kb_cpp_tile_backend(void);
int kb_cpp_gemm_s8s8s32_tiles(const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int);
}

static int failures = 0;
static std::mt19937 rng(1234);

static std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
static void check(const char* what, int rc, const std::vector<float>& got, const std::vector<double>& ref, double tol) {
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double e = std::fabs(got[i] - ref[i]) / (1.0 + std::fabs(ref[i]));
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  bool ok = rc == 0 && worst <= tol;
  std::printf("%-10s isa=%d rc=%d worst=%.2e %s%s\n", what, kb_cpp_isa(), rc, worst, ok ? "ok" : "FAIL ",
              rc ? kb_cpp_last_error() : "");
  failures += !ok;
}

int main() {
  const int isas[] = {2, 1};
  for (int isa : isas) {
    if (kb_cpp_set_isa(isa) != 0) continue;   // the CPU lacks it
    const float nan = NAN;
    {  // softmax + norms: 37 x 129
      const int64_t R = 37, C = 129;
      auto x = randn(R * C), w = randn(C), b = randn(C);
      std::vector<float> y(R * C, nan);
      std::vector<double> ref(R * C);
      for (int64_t r = 0; r < R; ++r) {
        double m = -INFINITY, s = 0;
        for (int64_t c = 0; c < C; ++c) m = std::fmax(m, x[r * C + c]);
        for (int64_t c = 0; c < C; ++c) s += std::exp(x[r * C + c] - m);
        for (int64_t c = 0; c < C; ++c) ref[r * C + c] = std::exp(x[r * C + c] - m) / s;
      }
      check("softmax", kb_cpp_softmax(x.data(), y.data(), R, C, C, C, 0, 0), y, ref, 1e-6);
      std::fill(y.begin(), y.end(), nan);
      for (int64_t r = 0; r < R; ++r) {
        double ss = 0;
        for (int64_t c = 0; c < C; ++c) ss += double(x[r * C + c]) * x[r * C + c];
        double rs = 1.0 / std::sqrt(ss / C + 1e-6);
        for (int64_t c = 0; c < C; ++c) ref[r * C + c] = x[r * C + c] * rs * w[c];
      }
      check("rmsnorm", kb_cpp_rmsnorm(x.data(), w.data(), y.data(), R, C, C, C, 1e-6f, 0, 0), y, ref, 1e-5);
      std::fill(y.begin(), y.end(), nan);
      for (int64_t r = 0; r < R; ++r) {
        double mu = 0, var = 0;
        for (int64_t c = 0; c < C; ++c) mu += x[r * C + c];
        mu /= C;
        for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu);
        double rs = 1.0 / std::sqrt(var / C + 1e-5);
        for (int64_t c = 0; c < C; ++c) ref[r * C + c] = (x[r * C + c] - mu) * rs * w[c] + b[c];
      }
      check("layernorm", kb_cpp_layernorm(x.data(), w.data(), b.data(), y.data(), R, C, C, C, 1e-5f, 0, 0), y, ref,
            1e-5);
    }
    {  // gemm 37 x 45 x 300
      const int64_t M = 37, N = 45, K = 300;
      auto a = randn(M * K), bm = randn(K * N);
      std::vector<float> c(M * N, nan);
      std::vector<double> ref(M * N, 0.0);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < N; ++j) ref[i * N + j] += double(a[i * K + k]) * bm[k * N + j];
      check("gemm", kb_cpp_gemm(a.data(), bm.data(), c.data(), M, N, K, K, N, N, 0, 0), c, ref, 1e-4);
    }
    {  // attention: 1 x 4 heads (2 kv heads) x 33 queries x 70 keys x 64, causal
      const int64_t B = 1, H = 4, HKV = 2, SQ = 33, SK = 70, D = 64;
      auto q = randn(B * H * SQ * D), k = randn(B * HKV * SK * D), v = randn(B * HKV * SK * D);
      std::vector<float> o(B * H * SQ * D, nan);
      std::vector<double> ref(o.size());
      const double scale = 1.0 / std::sqrt(double(D));
      for (int64_t h = 0; h < H; ++h) {
        const int64_t hk = h / (H / HKV);
        for (int64_t i = 0; i < SQ; ++i) {
          std::vector<double> s(SK);
          double m = -INFINITY, l = 0;
          for (int64_t j = 0; j <= std::min(i, SK - 1); ++j) {
            double d = 0;
            for (int64_t t = 0; t < D; ++t) d += double(q[(h * SQ + i) * D + t]) * k[(hk * SK + j) * D + t];
            s[j] = d * scale;
            m = std::fmax(m, s[j]);
          }
          for (int64_t j = 0; j <= std::min(i, SK - 1); ++j) l += (s[j] = std::exp(s[j] - m));
          for (int64_t t = 0; t < D; ++t) {
            double acc = 0;
            for (int64_t j = 0; j <= std::min(i, SK - 1); ++j) acc += s[j] * v[(hk * SK + j) * D + t];
            ref[(h * SQ + i) * D + t] = acc / l;
          }
        }
      }
      check("attention", kb_cpp_attention_fwd(q.data(), k.data(), v.data(), o.data(), B, H, HKV, SQ, SK, D, 1,
                                               float(scale), 0, 0), o, ref, 1e-5);
    }
    if (kb_cpp_tile_backend() != 0) {  // int8 tiles, 37 x 45 x 300: exact
      const int64_t M = 37, N = 45, K = 300;
      std::vector<int8_t> a(M * K), bm(K * N);
      for (auto& x : a) x = int8_t(rng() % 256 - 128);
      for (auto& x : bm) x = int8_t(rng() % 256 - 128);
      std::vector<int32_t> c(M * N, -7);
      std::vector<float> got(M * N);
      std::vector<double> ref(M * N, 0.0);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < N; ++j) ref[i * N + j] += double(a[i * K + k]) * bm[k * N + j];
      int rc = kb_cpp_gemm_s8s8s32_tiles(a.data(), bm.data(), c.data(), M, N, K, K, N, N, 0);
      for (int64_t i = 0; i < M * N; ++i) got[i] = float(c[i]);
      check("int8-tiles", rc, got, ref, 0.0);
    }
    // an error is reported, not a crash
    int rc = kb_cpp_softmax(nullptr, nullptr, 1, 1, 1, 1, 0, 0);
    std::printf("bad args -> rc=%d \"%s\"\n", rc, kb_cpp_last_error());
    failures += rc == 0;
  }
  kb_cpp_set_isa(-1);
  std::printf("%s\n", failures ? "FAILED" : "all ok");
  return failures ? 1 : 0;
}
