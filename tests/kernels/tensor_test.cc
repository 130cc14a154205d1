// Tensor views on the CPU: shapes, strides, slicing, selection, transposes, views, and errors.
#include "kernels/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace mimo::kernels {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The element at `index` of an f32 tensor, through its strides.
float At(const Tensor& t, std::vector<int64_t> index) {
  int64_t offset = 0;
  for (int d = 0; d < t.dim(); ++d) offset += index[d] * t.stride(d);
  return t.data<float>()[offset];
}

// A (2, 3, 4) f32 tensor holding 0..23.
Tensor Iota(CpuAllocator& allocator) {
  absl::StatusOr<Tensor> t = Tensor::Empty({2, 3, 4}, DType::kF32, allocator);
  EXPECT_TRUE(t.ok()) << t.status();
  std::iota(t->data<float>(), t->data<float>() + 24, 0.0f);
  return *t;
}

TEST(TensorTest, EmptyIsContiguousAndCounted) {
  CpuAllocator allocator;
  const Tensor t = Iota(allocator);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.dim(), 3);
  EXPECT_THAT(t.strides(), ElementsAre(12, 4, 1));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.device(), Device::Cpu());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 256, 0u);
  EXPECT_EQ(t.ToString(), "Tensor(f32, cpu, [2, 3, 4], strides [12, 4, 1])");
  EXPECT_EQ(allocator.stats().allocated_bytes, 256);  // Rounded to the alignment.
  EXPECT_FALSE(Tensor().defined());
}

TEST(TensorTest, StorageIsFreedWithTheLastView) {
  CpuAllocator allocator;
  {
    Tensor view;
    {
      const Tensor t = Iota(allocator);
      view = *t.Slice(1, 1, 3);
    }
    EXPECT_EQ(allocator.stats().allocated_bytes, 256);  // The view keeps the storage.
    EXPECT_EQ(At(view, {1, 0, 2}), 18.0f);
  }
  EXPECT_EQ(allocator.stats().allocated_bytes, 0);
  EXPECT_EQ(allocator.stats().peak_allocated_bytes, 256);
}

TEST(TensorTest, SliceSelectTransposeShareStorage) {
  CpuAllocator allocator;
  const Tensor t = Iota(allocator);
  const Tensor s = *t.Slice(2, 1, 3);  // (2, 3, 2)
  EXPECT_THAT(s.shape(), ElementsAre(2, 3, 2));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(At(s, {1, 2, 1}), 1 * 12 + 2 * 4 + 2);
  const Tensor row = *t.Select(0, 1);  // (3, 4)
  EXPECT_THAT(row.shape(), ElementsAre(3, 4));
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_EQ(At(row, {0, 0}), 12.0f);
  const Tensor last = *t.Select(-1, 3);  // (2, 3)
  EXPECT_EQ(At(last, {1, 1}), 12 + 4 + 3);
  const Tensor tr = *t.Transpose(0, -1);  // (4, 3, 2)
  EXPECT_THAT(tr.shape(), ElementsAre(4, 3, 2));
  EXPECT_THAT(tr.strides(), ElementsAre(1, 4, 12));
  EXPECT_EQ(At(tr, {3, 2, 1}), At(t, {1, 2, 3}));
  EXPECT_FALSE(tr.is_contiguous());
  // Writes through a view show in the original.
  s.data<float>()[0] = -1.0f;
  EXPECT_EQ(At(t, {0, 0, 1}), -1.0f);
}

TEST(TensorTest, ViewReshapesContiguousTensorsOnly) {
  CpuAllocator allocator;
  const Tensor t = Iota(allocator);
  const Tensor v = *t.View({6, -1});
  EXPECT_THAT(v.shape(), ElementsAre(6, 4));
  EXPECT_EQ(At(v, {5, 3}), 23.0f);
  EXPECT_THAT(t.View({5, -1}).status().message(), HasSubstr("cannot infer the -1"));
  EXPECT_THAT(t.View({5, 5}).status().message(), HasSubstr("has 25 elements, not 24"));
  EXPECT_THAT(t.View({-1, -1}).status().message(), HasSubstr("one size may be -1"));
  const Tensor tr = *t.Transpose(0, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(tr.View({24}).status()));
  // Size-1 dimensions do not break contiguity, whatever their stride.
  EXPECT_TRUE(t.Slice(0, 1, 2)->is_contiguous());
}

TEST(TensorTest, BadArgumentsAreNamed) {
  CpuAllocator allocator;
  const Tensor t = Iota(allocator);
  EXPECT_THAT(t.Slice(3, 0, 1).status().message(),
              HasSubstr("dimension 3 is out of range for 3-d tensor [2, 3, 4]"));
  EXPECT_THAT(t.Slice(1, 2, 4).status().message(), HasSubstr("[2, 4) is not within dimension 1"));
  EXPECT_THAT(t.Slice(1, 2, 1).status().message(), HasSubstr("is not within"));
  EXPECT_THAT(t.Select(0, 2).status().message(), HasSubstr("index 2 is out of range"));
  EXPECT_FALSE(t.Transpose(0, -4).ok());
  EXPECT_THAT(Tensor::Empty({2, -1}, DType::kBF16, allocator).status().message(),
              HasSubstr("negative size"));
  EXPECT_THAT(Tensor::Empty({int64_t{1} << 40, int64_t{1} << 30}, DType::kF32, allocator)
                  .status()
                  .message(),
              HasSubstr("needs more than 2^62 bytes"));
}

TEST(TensorTest, ZeroElementsHoldNoMemoryAndScalarsOne) {
  CpuAllocator allocator;
  const Tensor empty = *Tensor::Empty({0, 5}, DType::kI64, allocator);
  EXPECT_TRUE(empty.defined());
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(allocator.stats().allocations, 0);
  const Tensor scalar = *Tensor::Empty({}, DType::kI32, allocator);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.nbytes(), 4);
  EXPECT_NE(scalar.data(), nullptr);
}

TEST(TensorTest, WrapDoesNotFree) {
  std::vector<uint16_t> host(6, 7);
  {
    const Tensor t = Tensor::Wrap(host.data(), {2, 3}, DType::kBF16, Device::Cpu());
    EXPECT_EQ(t.nbytes(), 12);
    EXPECT_EQ(t.data<uint16_t>()[5], 7);
  }
  EXPECT_EQ(host[5], 7);  // Still ours.
}

TEST(TensorTest, DTypesAndDevices) {
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeName(DType::kI32), "i32");
  EXPECT_EQ(Device::Cuda(1).ToString(), "cuda:1");
  EXPECT_NE(Device::Cuda(0), Device::Cpu());
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(int64_t{3} << 29), "1.5 GiB");
  EXPECT_EQ(FormatBytes(int64_t{2} << 20), "2 MiB");
}

}  // namespace
}  // namespace mimo::kernels
