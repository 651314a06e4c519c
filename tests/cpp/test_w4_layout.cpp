// The CUDA W4A16 device layout (backend/w4_layout.h), checked on the host: every code and every
// (scale, zero) of random kQGroup weights comes back from the packed layout; the documented fragment
// formula (read straight from the header's description, independently of the packer's inverse)
// addresses the same codes; padded rows are zero; unsupported weights get a clear Status.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "backend/w4_layout.h"
#include "core/group_quant.h"
#include "w4_test_util.h"

namespace nb {
namespace {

struct Shape {
  int64_t n, k, group;
  bool sym;
};

TEST(W4Layout, RoundTripsCodesAndParams) {
  const Shape shapes[] = {{64, 64, 64, false}, {17, 576, 64, true}, {100, 256, 128, false},
                          {130, 1024, 128, true}, {33, 192, -1, false}, {5, 128, -1, true}};
  uint32_t seed = 11;
  for (const Shape& s : shapes) {
    auto t = w4_test::random_w4(s.n, s.k, s.group, s.sym, seed++);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    auto packed = w4_pack(*t);
    ASSERT_TRUE(packed.ok()) << packed.status().to_string();
    const W4Layout& l = *packed;
    const GroupQuant& q = *t->group_quant();
    EXPECT_EQ(l.n_pad % 64, 0);
    EXPECT_GE(l.n_pad, s.n);
    EXPECT_EQ(l.code_bytes(), l.n_pad * s.k / 2);
    EXPECT_EQ(l.num_groups, q.num_groups);
    for (int64_t r = 0; r < s.n; ++r) {
      const uint8_t* codes = t->row<const uint8_t>(r);
      for (int64_t c = 0; c < s.k; ++c) ASSERT_EQ(w4_unpack_code(l, r, c), codes[c]) << "row " << r << " col " << c;
      for (int64_t g = 0; g < q.num_groups; ++g) {
        uint16_t sh, zh;
        w4_unpack_params(l, r, g, &sh, &zh);
        ASSERT_EQ(fp16_to_fp32(sh), q.scale(r, g));  // random_w4's scales are f16 values
        ASSERT_EQ(fp16_to_fp32(zh), q.zero(r, g));
      }
    }
    for (int64_t r = s.n; r < l.n_pad; ++r) {
      for (int64_t c = 0; c < s.k; ++c) ASSERT_EQ(w4_unpack_code(l, r, c), 0);
      for (int64_t g = 0; g < q.num_groups; ++g) {
        uint16_t sh, zh;
        w4_unpack_params(l, r, g, &sh, &zh);
        ASSERT_EQ(sh, 0);
      }
    }
    // The header's formula, walked in storage order: word (tile, chunk, lane, t), nibble reg + 4h.
    const int64_t chunks = s.k / 64;
    for (int64_t tile = 0; tile < l.n_pad / 16; ++tile)
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (int64_t lane = 0; lane < 32; ++lane)
          for (int64_t t4 = 0; t4 < 4; ++t4) {
            const uint32_t w = l.codes[static_cast<size_t>(((tile * chunks + chunk) * 32 + lane) * 4 + t4)];
            const int64_t gid = lane / 4, tig = lane % 4;
            for (int reg = 0; reg < 4; ++reg)
              for (int h = 0; h < 2; ++h) {
                const int64_t row = 16 * tile + gid + 8 * (reg & 1);
                const int64_t col = 64 * chunk + 16 * tig + 4 * t4 + 2 * (reg >> 1) + h;
                const int want = row < s.n ? t->row<const uint8_t>(row)[col] : 0;
                ASSERT_EQ(static_cast<int>((w >> (4 * (reg + 4 * h))) & 15u), want) << "row " << row << " col " << col;
              }
          }
  }
}

TEST(W4Layout, ConcatRowsStacksCodesAndParams) {
  for (const bool sym : {false, true}) {
    auto a = w4_test::random_w4(70, 128, 64, sym, 21), b = w4_test::random_w4(5, 128, 64, sym, 22);
    ASSERT_TRUE(a.ok() && b.ok());
    auto c = concat_group_quant_rows({*a, *b});
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ASSERT_EQ(c->dim(0), 75);
    ASSERT_EQ(c->dim(1), 128);
    std::vector<float> want(128), got(128);
    for (int64_t r = 0; r < 75; ++r) {
      dequantize_tensor_row(r < 70 ? *a : *b, r < 70 ? r : r - 70, want.data());
      dequantize_tensor_row(*c, r, got.data());
      ASSERT_EQ(got, want) << "row " << r;
    }
  }
  auto a = w4_test::random_w4(8, 128, 64, false, 23), other_group = w4_test::random_w4(8, 128, 128, false, 24);
  auto sym = w4_test::random_w4(8, 128, 64, true, 25), other_k = w4_test::random_w4(8, 192, 64, false, 26);
  ASSERT_TRUE(a.ok() && other_group.ok() && sym.ok() && other_k.ok());
  EXPECT_EQ(concat_group_quant_rows({*a, *other_group}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(concat_group_quant_rows({*a, *sym}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(concat_group_quant_rows({*a, *other_k}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(concat_group_quant_rows({}).status().code(), StatusCode::kInvalidArgument);
}

TEST(W4Layout, RejectsWhatTheKernelsCannotRun) {
  auto k96 = w4_test::random_w4(8, 96, 32, false, 1);  // K not a multiple of 64
  ASSERT_TRUE(k96.ok());
  EXPECT_EQ(w4_pack(*k96).status().code(), StatusCode::kUnimplemented);
  auto g32 = w4_test::random_w4(8, 128, 32, false, 2);  // group 32 < one 64-input chunk
  ASSERT_TRUE(g32.ok());
  EXPECT_EQ(w4_pack(*g32).status().code(), StatusCode::kUnimplemented);

  // act-order: a g_idx that is not j / group_size
  GroupQuant q;
  q.bits = 4;
  q.group_size = 64;
  q.num_groups = 2;
  q.scales.assign(2 * 2, 0.01f);
  q.zeros.assign(2 * 2, 8.f);
  q.g_idx.resize(128);
  for (int j = 0; j < 128; ++j) q.g_idx[static_cast<size_t>(j)] = j % 2;
  auto act = make_group_quant_tensor(std::vector<uint8_t>(2 * 128, 3), 2, 128, q, "act_order");
  ASSERT_TRUE(act.ok()) << act.status().to_string();
  const Status s = w4_pack(*act).status();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("act-order"), std::string::npos) << s.to_string();

  GroupQuant q8 = q;  // 8-bit codes
  q8.bits = 8;
  q8.g_idx.clear();
  auto w8 = make_group_quant_tensor(std::vector<uint8_t>(2 * 128, 200), 2, 128, q8, "w8");
  ASSERT_TRUE(w8.ok()) << w8.status().to_string();
  EXPECT_EQ(w4_pack(*w8).status().code(), StatusCode::kUnimplemented);

  GroupQuant qb;  // a scale beyond f16's range (finite in f32)
  qb.bits = 4;
  qb.group_size = 64;
  qb.symmetric = true;
  qb.num_groups = 1;
  qb.scales = {1e5f};
  auto big = make_group_quant_tensor(std::vector<uint8_t>(64, 1), 1, 64, qb, "big");
  ASSERT_TRUE(big.ok()) << big.status().to_string();
  EXPECT_EQ(w4_pack(*big).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nb
